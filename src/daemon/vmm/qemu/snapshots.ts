import { readdir, readlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { SavedRam, SavedState, VmHandle, VmmPausing, VmmSnapshots } from '../driver.js';
import { RAM_BACKEND_ID, incomingFromFile, outgoingToFile } from './argv.js';
import { QmpClient } from './qmp.js';

/**
 * Saving a running QEMU guest and resuming it elsewhere, over QMP.
 *
 * save: `stop`; one `transaction` of `blockdev-snapshot-sync` (mode existing) puts every writable disk onto a
 * fresh qcow2 overlay, so the file under it is frozen at the instant the CPUs stopped (no copy of any disk);
 * `migrate` to `exec:cat > FILE` writes device state (QEMU 7.2 has no `file:` transport); the RAM, a memfd
 * QEMU maps shared (argv.ts), is left out of that stream (x-ignore-shared) and copied out of the memfd into
 * the RAM file, sparse (only the pages the guest touched take disk); `cont`. A VM whose RAM is not such a
 * memfd (restored from a RAM file, or booted before RAM backends) writes its RAM into the stream instead.
 *
 * restore: the VM is launched with the same machine and `-incoming`: from a RAM file, deferred until
 * `loadDeferredState` has set x-ignore-shared; otherwise straight from the stream. `waitRestored` starts the
 * CPUs once the state is loaded.
 */

interface MigrateStatus {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

const QMP_TIMEOUT_MS = 10_000;
/** What /proc/PID/fd/N of QEMU's RAM memfd links to (memory-backend-memfd names its memfd after its type). */
const RAM_MEMFD_LINK = '/memfd:memory-backend-memfd';

type Qmp = <T = unknown>(cmd: string, args?: Record<string, unknown>) => Promise<T>;

const ignoreShared = (on: boolean) => ({ capabilities: [{ capability: 'x-ignore-shared', state: on }] });

/**
 * How this VM's RAM can be saved: 'file' with the memfd's /proc path when it is a shared memfd the daemon can
 * read, else the stream under the block it has.
 */
async function ramSource(call: Qmp, pid: number): Promise<{ ram: SavedRam; memfd?: string }> {
  const devs = await call<{ id?: string; share?: boolean }[]>('query-memdev');
  const dev = devs.find((d) => d.id === RAM_BACKEND_ID);
  if (!dev) return { ram: 'stream-machine' };
  if (dev.share !== true) return { ram: 'stream' };
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  const found: string[] = [];
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith(RAM_MEMFD_LINK)) found.push(`/proc/${pid}/fd/${fd}`);
  }
  // Exactly one, or the stream: a copy of the wrong memfd would restore garbage.
  return found.length === 1 ? { ram: 'file', memfd: found[0] } : { ram: 'stream' };
}

/** Starts loading a state that a VM was launched to wait for (`-incoming defer`): its RAM is a file. */
export async function loadDeferredState(controlSocketPath: string, incoming: SavedState, signal?: AbortSignal): Promise<void> {
  const qmp = await QmpClient.connect(controlSocketPath, { signal, timeoutMs: 5000 });
  try {
    await qmp.execute('migrate-set-capabilities', ignoreShared(true), { signal, timeoutMs: QMP_TIMEOUT_MS });
    await qmp.execute('migrate-incoming', { uri: incomingFromFile(incoming.statePath) }, { signal, timeoutMs: QMP_TIMEOUT_MS });
  } finally {
    qmp.close();
  }
}

export function qemuSnapshots(run: CommandRunner): VmmSnapshots & { loadedState(h: VmHandle, s?: AbortSignal): Promise<boolean> } {
  return {
    disks: 'layers',
    async save(handle: VmHandle, o, signal) {
      const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
      try {
        const call: Qmp = (cmd, args) => qmp.execute(cmd, args, { signal, timeoutMs: QMP_TIMEOUT_MS });
        // Only local file I/O: the default 128 MiB/s throttle would only make the pause longer.
        await call('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
        const { ram, memfd } = await ramSource(call, handle.pid);
        await call('migrate-set-capabilities', ignoreShared(ram === 'file'));
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
          // The CPUs are stopped, so the memfd is the RAM of that instant. Sparse: holes and zero pages are
          // skipped, and the file keeps the RAM's full length (QEMU maps it whole on restore).
          if (memfd !== undefined) await run('cp', ['--sparse=always', memfd, o.ramPath], { signal });
          await o.whilePaused?.();
        } finally {
          // The guest runs on whatever happened; a `cont` that fails leaves it paused, which the error says.
          await qmp.execute('cont', undefined, { timeoutMs: QMP_TIMEOUT_MS });
        }
        return { pausedMs: Math.round(performance.now() - t0), ram };
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
