import type { DnsVmEntry } from '../../../protocol/dns.js';
import type { DaemonStatus } from '../../../protocol/daemon.js';
import type { NetworkMode } from '../../../protocol/common.js';
import type { Logger } from '../../../shared/logger.js';
import type { DnsHostIntegration } from '../../services/dns/host-integration.js';
import type { DoctorService } from '../../services/doctor.js';
import type { ImageService } from '../../services/image/service.js';
import type { TapNetwork } from '../../services/network/tap.js';
import type { VmService } from '../../services/vm/service.js';
import type { WorkspaceService } from '../../services/workspace/service.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { Handler } from '../server.js';
import { daemonHandlers } from './daemon.js';
import { dnsHandlers } from './dns.js';
import { ExecRegistry, execHandlers } from './exec.js';
import { imageHandlers } from './image.js';
import { networkHandlers } from './network.js';
import { statsHandlers } from './stats.js';
import { AttachRegistry, sessionHandlers } from './session.js';
import type { SessionService } from '../../services/session/service.js';
import { vmHandlers } from './vm.js';
import { snapshotHandlers } from './snapshot.js';
import { poolHandlers } from './pool.js';
import type { PoolService } from '../../services/pool/service.js';
import type { SnapshotService } from '../../services/snapshot/service.js';
import { workspaceHandlers } from './workspace.js';

export { AttachRegistry, ExecRegistry };

export interface HandlerDeps {
  vms: VmService;
  snapshots: SnapshotService;
  pools: PoolService;
  workspaces: WorkspaceService;
  sessions: SessionService;
  images: ImageService;
  doctor: DoctorService;
  dnsHost: DnsHostIntegration;
  tap: TapNetwork;
  /** config.json's network.defaultMode. */
  defaultNetwork: NetworkMode;
  /** Every VM record (for names in network.status). */
  vmRecords: () => VmRecord[];
  /** Every VM with its current address, as the DNS integration sees it. */
  dnsVms: () => DnsVmEntry[];
  status: () => DaemonStatus;
  /** Stops the daemon after the reply has been sent. */
  shutdown: () => void;
  log: Logger;
}

/** The daemon's handler table: one handler per method of src/protocol. */
export function buildHandlers(d: HandlerDeps, execs: ExecRegistry, attaches = new AttachRegistry()): Handler[] {
  return [
    ...daemonHandlers(d),
    ...imageHandlers(d.images),
    ...vmHandlers({
      vms: d.vms,
      log: d.log,
      snapshotSource: (ref) => d.snapshots.source(ref),
      takeFromPool: (p, ctx) => d.pools.take(p, ctx.progress, ctx.signal),
    }),
    ...snapshotHandlers(d.snapshots, d.vms),
    ...poolHandlers(d.pools),
    ...execHandlers(d.vms, execs),
    ...statsHandlers(d.vms),
    ...sessionHandlers(d.sessions, attaches),
    ...workspaceHandlers(d.workspaces),
    ...networkHandlers({ tap: d.tap, vms: d.vms, defaultMode: d.defaultNetwork, listVms: d.vmRecords }),
    ...dnsHandlers({ dnsHost: d.dnsHost, listVms: d.dnsVms }),
  ];
}
