import type { VmSyncInfo } from '../../../protocol/vm.js';
import type { AgentClient } from '../../guest/agent-client.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { LiveVms } from './live.js';
import { validateVmName } from './names.js';

/**
 * What the warm pool (`services/pool`) does to VMs beyond the lifecycle every VM has: parking a booted VM's
 * CPUs and starting them again, reaching its guest agent, and handing a parked VM over to the user (its new
 * name, what an identity sync put into it). VmService builds it and hands it out as `vms.pool`. Every call is
 * made inside `VmService.withRunning`, so the VM's lifecycle lock is held by the caller.
 */

export interface VmPoolHooksDeps {
  live: LiveVms;
  vms: VmRepo;
}

export class VmPoolHooks {
  constructor(private readonly d: VmPoolHooksDeps) {}

  /** Stops a running VM's CPUs where they are (LiveVms.park). */
  park(id: string, signal?: AbortSignal): Promise<void> {
    return this.d.live.park(id, signal);
  }

  /** Starts a parked VM's CPUs again. */
  unpark(id: string, signal?: AbortSignal): Promise<void> {
    return this.d.live.unpark(id, signal);
  }

  /** The VM's guest agent, connecting if there is no open connection (LiveVms.agent). */
  agent(vm: VmRecord, signal?: AbortSignal): Promise<AgentClient> {
    return this.d.live.agent(vm, signal);
  }

  /** A warm pool's VM becomes the user's: its new name, no pool mark. */
  adopt(id: string, name: string): VmRecord {
    validateVmName(name);
    return this.d.vms.update(id, { name, pool: null });
  }

  /** Records what an identity sync put into the VM (as a start's sync does). */
  recordSynced(id: string, info: VmSyncInfo): void {
    this.d.vms.update(id, { synced: info });
  }
}
