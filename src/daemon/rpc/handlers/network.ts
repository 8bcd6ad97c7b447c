import { failedPrecondition } from '../../../errors/index.js';
import type { NetworkMode } from '../../../protocol/common.js';
import { NetworkMethods, type NetworkStatus } from '../../../protocol/network.js';
import { runCommand } from '../../../shared/command.js';
import { TapNetwork } from '../../services/network/tap.js';
import type { VmService } from '../../services/vm/service.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { handler, type Handler } from '../server.js';

export interface NetworkHandlerDeps {
  tap: TapNetwork;
  vms: VmService;
  defaultMode: NetworkMode;
  listVms: () => VmRecord[];
}

async function status(d: NetworkHandlerDeps, signal?: AbortSignal): Promise<NetworkStatus> {
  const sup = await TapNetwork.supported(runCommand, signal);
  const result: NetworkStatus = {
    defaultMode: d.defaultMode,
    loopback: { supported: true },
    tap: { supported: sup.ok, ...(sup.reason ? { reason: sup.reason } : {}) },
  };
  if (!sup.ok) return result;
  const st = await d.tap.status(signal);
  const names = new Map(d.listVms().map((v) => [v.id, v.name]));
  result.tap.bridge = st.bridge;
  result.tap.rulesInstalled = st.tables.inet && st.tables.bridge;
  result.tap.vms = st.vms.map((v) => ({
    vmId: v.vmId,
    name: names.get(v.vmId) ?? null,
    tap: v.tapName,
    address: v.address,
    mac: v.mac,
    egress: v.egress,
  }));
  return result;
}

/** network.status and network.down: what tap networking put on the host, and removing all of it. */
export function networkHandlers(d: NetworkHandlerDeps): Handler[] {
  return [
    handler(NetworkMethods.status, async (_p, ctx) => status(d, ctx.signal)),
    handler(NetworkMethods.down, async (_p, ctx) => {
      const running = d.vms.runningTapVms();
      if (running.length > 0)
        throw failedPrecondition(
          `tap VMs are running: ${running.join(', ')}`,
          `stop them first: \`banger vm stop ${running.join(' ')}\``,
        );
      await d.tap.down(ctx.signal);
      return status(d, ctx.signal);
    }),
  ];
}
