import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { VmHandle, VmmPausing, VmmSnapshots } from '../driver.js';
import { outgoingToFile } from './argv.js';
import { QmpClient } from './qmp.js';

/**
 * Saving a running QEMU guest and resuming it elsewhere, over QMP.
 *
 * save: `stop`; one `transaction` of `blockdev-snapshot-sync` (mode existing) puts every writable disk onto a
 * fresh qcow2 overlay, so the file under it is frozen at the instant the CPUs stopped (no copy of any disk);
 * `migrate` to `exec:cat > FILE` writes device state and memory (QEMU 7.2 has no `file:` transport); `cont`.
 * The memory goes into the stream in full (zero pages as markers): a file-backed RAM shared with restored VMs
 * (x-ignore-shared) is not done.
 *
 * restore: the VM is launched with `-incoming 'exec:cat FILE'` and the same machine; QEMU starts the CPUs
 * itself once the state is loaded.
 */

interface MigrateStatus {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

const QMP_TIMEOUT_MS = 10_000;

export function qemuSnapshots(): VmmSnapshots & { loadedState(h: VmHandle, s?: AbortSignal): Promise<boolean> } {
  return {
    async save(handle: VmHandle, o, signal) {
      const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
      try {
        const call = <T = unknown>(cmd: string, args?: Record<string, unknown>) =>
          qmp.execute<T>(cmd, args, { signal, timeoutMs: QMP_TIMEOUT_MS });
        // Only local file I/O: the default 128 MiB/s throttle would only make the pause longer.
        await call('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
        const t0 = performance.now();
        await call('stop');
        try {
          await call('transaction', {
            actions: o.disks.map((d) => ({
              type: 'blockdev-snapshot-sync',
              data: { device: d.id, 'snapshot-file': d.overlayPath, format: 'qcow2', mode: 'existing' },
            })),
          });
          await call('migrate', { uri: outgoingToFile(o.statePath) });
          for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
            const st = await call<MigrateStatus>('query-migrate');
            if (st.status === 'completed') break;
            if (st.status === 'failed' || st.status === 'cancelled')
              throw new BangerError(ErrorCode.Internal, `QEMU could not save the VM's state: ${st['error-desc'] ?? st.status}`);
            await sleep(delay, undefined, { signal });
          }
        } finally {
          // The guest runs on whatever happened; a `cont` that fails leaves it paused, which the error says.
          await qmp.execute('cont', undefined, { timeoutMs: QMP_TIMEOUT_MS });
        }
        return { pausedMs: Math.round(performance.now() - t0) };
      } finally {
        qmp.close();
      }
    },

    /** Whether the incoming state has loaded (then it starts the CPUs, which the saved state left stopped). */
    async loadedState(handle: VmHandle, signal?: AbortSignal): Promise<boolean> {
      const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
      try {
        const st = await qmp.execute<MigrateStatus>('query-migrate', undefined, { signal, timeoutMs: QMP_TIMEOUT_MS });
        if (st.status !== 'completed') return false;
        await qmp.execute('cont', undefined, { signal, timeoutMs: QMP_TIMEOUT_MS });
        return true;
      } finally {
        qmp.close();
      }
    },

    async waitRestored(handle: VmHandle, deadline: number, signal?: AbortSignal) {
      let last = '';
      for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
        signal?.throwIfAborted();
        const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
        try {
          const st = await qmp.execute<{ status: string }>('query-status', undefined, { signal, timeoutMs: QMP_TIMEOUT_MS });
          last = st.status;
        } finally {
          qmp.close();
        }
        if (last === 'running') return;
        // The state was saved with the CPUs stopped, and that is the state it loads into: start them.
        if (last === 'paused' && (await this.loadedState(handle, signal))) continue;
        if (last !== 'inmigrate' && last !== 'prelaunch')
          throw new BangerError(ErrorCode.Internal, `QEMU did not resume the saved VM (its state is '${last}')`);
        if (Date.now() > deadline)
          throw new BangerError(ErrorCode.DeadlineExceeded, `QEMU did not finish loading the saved VM in time (still '${last}')`);
        await sleep(delay, undefined, { signal });
      }
    },
  };
}

/** QMP `stop` and `cont`: the guest's CPUs stop where they are; memory, devices and connections stay. */
export function qemuPausing(): VmmPausing {
  const call = async (handle: VmHandle, cmd: 'stop' | 'cont', signal?: AbortSignal) => {
    const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
    try {
      await qmp.execute(cmd, undefined, { signal, timeoutMs: QMP_TIMEOUT_MS });
    } finally {
      qmp.close();
    }
  };
  return {
    pause: (handle, signal) => call(handle, 'stop', signal),
    resume: (handle, signal) => call(handle, 'cont', signal),
  };
}
