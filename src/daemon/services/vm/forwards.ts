import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../../../shared/logger.js';
import type { GuestSession } from '../../guest/session.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { writeHandles } from './handles.js';
import { watchGuestPorts } from './guest-ports.js';
import type { LiveVm } from './live.js';

export interface GuestPortForwarderDeps {
  log: Logger;
  /** The VM's open guest session (connecting if needed). */
  session: (vm: VmRecord, signal: AbortSignal) => Promise<GuestSession>;
  /** handles.json of a VM: the forward set is kept there for a restarted daemon. */
  handlesPath: (vmId: string) => string;
  /** Pause after the watch ends before watching again (the guest rebooting, a broken channel, a hostile frame). */
  retryMs?: number;
}

/**
 * Keeps one forward per listening guest port on the VM's own host address while the VM runs (loopback
 * networking), so `NAME.vm:PORT` reaches a server started in the guest. Needs a driver that can change
 * forwards at runtime (`portForwarding`). Runs until the VM's watch signal aborts.
 */
export class GuestPortForwarder {
  constructor(private readonly d: GuestPortForwarderDeps) {}

  start(vm: VmRecord, live: LiveVm): void {
    const pf = live.driver.portForwarding;
    if (vm.networkMode !== 'loopback' || !pf) return;
    const signal = live.watch.signal;
    const fwd = (port: number) => ({ hostAddress: vm.hostAddress, hostPort: port, guestPort: port });
    let applying = Promise.resolve();
    const apply = (wanted: Set<number>) => {
      applying = applying
        .then(async () => {
          for (const port of [...live.forwards].filter((p) => !wanted.has(p))) {
            await pf.removeForward(live.handle, fwd(port), signal).catch(() => undefined);
            live.forwards.delete(port);
          }
          for (const port of [...wanted].filter((p) => !live.forwards.has(p))) {
            try {
              await pf.addForward(live.handle, fwd(port), signal);
              live.forwards.add(port);
            } catch (e) {
              this.d.log.warn({ vm: vm.name, port, err: (e as Error).message }, 'could not forward guest port');
            }
          }
          if (!signal.aborted)
            await writeHandles(this.d.handlesPath(vm.id), {
              ...live.handle,
              forwards: [...live.forwards].sort((a, b) => a - b),
            });
          this.d.log.info({ vm: vm.name, ports: [...live.forwards] }, 'guest port forwards');
        })
        .catch(() => undefined);
    };
    void (async () => {
      while (!signal.aborted) {
        try {
          const session = await this.d.session(vm, signal);
          await watchGuestPorts(session, vm.guestAddress, apply, signal);
        } catch (e) {
          if (!signal.aborted) this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'guest port watch ended');
        }
        await sleep(this.d.retryMs ?? 2000, undefined, { signal }).catch(() => undefined);
      }
    })();
  }
}
