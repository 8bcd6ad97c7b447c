/**
 * Firecracker's snapshots (`/snapshot/create`, `/snapshot/load`): a Full snapshot of the paused guest (its
 * device state, and its whole memory in a file), with the disks copied by the caller while it is paused:
 * Firecracker's drives are raw files it cannot switch to new layers under a running guest. A restore is a
 * launch with `incoming` (config.ts firecrackerLoadRequest), its memory file mapped private, so VMs restored
 * from one snapshot share its pages.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { VmHandle, VmmSnapshots } from '../driver.js';
import type { FirecrackerApi, SnapshotCreateParams } from './api.js';

/** How long writing or loading a snapshot may take (the guest's whole memory goes through the file). */
export const SNAPSHOT_TIMEOUT_MS = 600_000;

/** The snapshots capability of the Firecracker driver; `apiOf` opens the API of a VM's process. */
export function firecrackerSnapshots(apiOf: (handle: VmHandle) => FirecrackerApi): VmmSnapshots {
  return {
    disks: 'copies',
    async save(handle, o, signal) {
      if (o.disks.length > 0)
        throw new BangerError(ErrorCode.Internal, 'Firecracker cannot move a running guest onto new disk layers: copy the disks instead');
      const api = apiOf(handle);
      const t0 = performance.now();
      await api.call('PATCH', '/vm', { state: 'Paused' }, signal);
      try {
        const body: SnapshotCreateParams = { snapshot_type: 'Full', snapshot_path: o.statePath, mem_file_path: o.ramPath };
        await api.call('PUT', '/snapshot/create', body, signal, SNAPSHOT_TIMEOUT_MS);
        await o.whilePaused?.();
      } finally {
        // The guest runs on whatever happened; a resume that fails leaves it paused, which the error says.
        await api.call('PATCH', '/vm', { state: 'Resumed' });
      }
      return { pausedMs: Math.round(performance.now() - t0), ram: 'file' };
    },
    async waitRestored(handle, deadline, signal) {
      const api = apiOf(handle);
      for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
        const st = (await api.describeInstance(signal)).state;
        if (st === 'Running') return;
        if (Date.now() >= deadline)
          throw new BangerError(ErrorCode.DeadlineExceeded, `the restored Firecracker VM is still '${st}' (expected Running)`);
        await sleep(delay, undefined, { signal });
      }
    },
  };
}
