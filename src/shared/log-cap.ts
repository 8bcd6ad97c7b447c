import { open, rename, writeFile } from 'node:fs/promises';
import { setInterval as every } from 'node:timers/promises';

/** The rotated copy of a capped log. */
export function rotatedLog(path: string): string {
  return `${path}.1`;
}

/**
 * Keeps an append-only log bounded while its writer keeps it open (the writer must have opened it with
 * O_APPEND, as QEMU's `append=on`, pino's destination and `>>` do, so a truncation by us is followed by
 * writes at the new end, not a sparse hole): when it passes `maxBytes`, its last `maxBytes`, from the first
 * whole line on, go to `<path>.1` and the file is truncated. Bytes written between the copy and the
 * truncation are lost. Returns whether it rotated; a missing file is not an error.
 */
export async function capLog(path: string, maxBytes: number): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r+');
  } catch {
    return false;
  }
  try {
    const { size } = await fh.stat();
    if (size <= maxBytes) return false;
    const tail = Buffer.alloc(maxBytes);
    await fh.read(tail, 0, maxBytes, size - maxBytes);
    const nl = tail.indexOf(0x0a);
    const keep = nl >= 0 && nl < maxBytes - 1 ? tail.subarray(nl + 1) : tail;
    const tmp = `${rotatedLog(path)}.tmp`;
    await writeFile(tmp, keep, { mode: 0o600 });
    await rename(tmp, rotatedLog(path));
    await fh.truncate(0);
    return true;
  } finally {
    await fh.close();
  }
}

/** Runs capLog(path, maxBytes) every `intervalMs` until `signal` aborts. */
export function keepLogCapped(path: string, maxBytes: number, intervalMs: number, signal: AbortSignal): void {
  void (async () => {
    try {
      for await (const _ of every(intervalMs, undefined, { signal })) {
        await capLog(path, maxBytes).catch(() => false);
      }
    } catch {
      /* aborted: the writer is gone or the process is stopping */
    }
  })();
}
