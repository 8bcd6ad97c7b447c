import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or undefined if it is gone. */
export async function processStartTime(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may contain spaces: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); field 22 is rest[19].
    if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
    const ticks = Number(rest[19]);
    return Number.isFinite(ticks) ? ticks : undefined;
  } catch {
    return undefined;
  }
}

/** The argv of a live process, or undefined if it is gone. */
export async function processArgv(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    if (raw.length === 0) return undefined;
    return raw.replace(/\0$/, '').split('\0');
  } catch {
    return undefined;
  }
}

/**
 * True when `pid` is alive, started at `startTime`, and its argv contains `marker` (e.g. the VM id):
 * a pid reused by another process fails at least one of these.
 */
export async function isSameProcess(pid: number, startTime: number, marker: string): Promise<boolean> {
  const st = await processStartTime(pid);
  if (st === undefined || st !== startTime) return false;
  const argv = await processArgv(pid);
  return argv !== undefined && argv.some((a) => a.includes(marker));
}

/** Polls until the process is gone (or a zombie). Works for processes that are not our children. */
export async function waitForProcessExit(
  pid: number,
  startTime: number,
  signal?: AbortSignal,
  intervalMs = 100,
): Promise<void> {
  for (;;) {
    signal?.throwIfAborted();
    const st = await processStartTime(pid);
    if (st === undefined || st !== startTime) return;
    await sleep(intervalMs, undefined, { signal });
  }
}
