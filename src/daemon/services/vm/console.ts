import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';

/**
 * Waits until `line` appears in the console log file, reading only what was appended since the last look.
 * Fails early when `alive()` says the VMM has exited.
 */
export async function waitForConsoleLine(
  path: string,
  line: string,
  opts: { deadline: number; signal?: AbortSignal; alive: () => Promise<boolean>; intervalMs?: number },
): Promise<void> {
  let offset = 0;
  let carry = '';
  for (let i = 0; ; i++) {
    opts.signal?.throwIfAborted();
    try {
      const fh = await open(path, 'r');
      try {
        const { size } = await fh.stat();
        if (size > offset) {
          const buf = Buffer.alloc(size - offset);
          await fh.read(buf, 0, buf.length, offset);
          offset = size;
          const text = carry + buf.toString('utf8');
          if (text.includes(line)) return;
          carry = text.slice(-line.length);
        }
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (i % 10 === 9 && !(await opts.alive()))
      throw new BangerError(ErrorCode.Unavailable, 'the VM stopped during boot', {
        hint: 'see the console with `banger vm logs NAME`',
      });
    if (Date.now() > opts.deadline)
      throw new BangerError(ErrorCode.DeadlineExceeded, `the guest did not finish booting (no "${line}" on its console)`, {
        hint: 'see the console with `banger vm logs NAME`',
      });
    await sleep(opts.intervalMs ?? 100, undefined, { signal: opts.signal });
  }
}
