import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode, isBangerError } from '../../../errors/index.js';
import { capLog, keepLogCapped, rotatedLog } from '../../../shared/log-cap.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';

/**
 * Thrown by waitForConsoleLine when the guest stalled in early boot (see `silentMs` there): silent, or its
 * kernel reported a stall. The message says which.
 */
export class EarlyBootStall extends Error {}

/** A line the kernel printed (`[    0.491988] ...`), as opposed to one from the guest's init or sshd. */
const KERNEL_LINE = /^\[\s*\d+\.\d+\] /;
/**
 * The kernel's report of a CPU that has not scheduled for 20 s or more (its soft-lockup watchdog) or of an RCU
 * stall (21 s). Seen in a CI run here during a software-emulated boot, at the kernel's crypto self-tests: both
 * vCPUs stuck (`cryptomgr_test` on one, `migration/1` on the other), reported again every 28 s for the boot's
 * whole three minutes; the same VM image booted 48 times without it, two and three VMs at once.
 */
const KERNEL_STALL = /^\[\s*\d+\.\d+\] (watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s!|rcu: INFO: \S+ (self-)?detected stalls?)/;

/**
 * Waits until `line` appears in the console log file, reading only what was appended since the last look,
 * and resolves with the rest of that console line (up to 64 characters; what follows the marker).
 * Fails early when `alive()` says the VMM has exited.
 */
export async function waitForConsoleLine(
  path: string,
  line: string,
  opts: {
    deadline: number;
    signal?: AbortSignal;
    alive: () => Promise<boolean>;
    intervalMs?: number;
    /**
     * Throw EarlyBootStall when not one byte arrived in this long (a guest stalled before its first line), or
     * when the console holds only kernel lines and nothing new came for twice this long (a stall just after
     * them; a healthy guest's next line comes from its init, well within that even on a loaded host), or when
     * the kernel reports a stall (KERNEL_STALL) before any line of the guest's init.
     */
    silentMs?: number;
  },
): Promise<string> {
  const secs = (ms: number) => Math.round(ms / 1000);
  const started = Date.now();
  let offset = 0;
  let carry = '';
  let grewAt = started;
  // Whether every whole line so far is a kernel line (the text after the last newline is not judged yet).
  let kernelOnly = true;
  let pending = '';
  let seenFor = -1; // polls since the marker was seen without the end of its line
  for (let i = 0; ; i++) {
    opts.signal?.throwIfAborted();
    try {
      const fh = await open(path, 'r');
      try {
        const { size } = await fh.stat();
        if (size < offset) offset = 0; // rotated underneath us
        if (size > offset) {
          const buf = Buffer.alloc(size - offset);
          await fh.read(buf, 0, buf.length, offset);
          offset = size;
          grewAt = Date.now();
          const text = buf.toString('utf8');
          carry += text;
          if (kernelOnly) {
            const lines = (pending + text).split('\n');
            pending = (lines.pop() ?? '').slice(-256);
            if (lines.some((l) => l.trim() !== '' && !KERNEL_LINE.test(l))) kernelOnly = false;
            const stall = kernelOnly && opts.silentMs !== undefined ? lines.find((l) => KERNEL_STALL.test(l)) : undefined;
            if (stall !== undefined)
              throw new EarlyBootStall(
                `the guest's kernel reported a stall before its init started (${escapeForTerminal(stall.replace(KERNEL_LINE, '').trim().slice(0, 120))})`,
              );
          }
        }
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const at = carry.indexOf(line);
    if (at >= 0) {
      const rest = carry.slice(at + line.length);
      const nl = rest.indexOf('\n');
      // The rest of the line may not have arrived yet: wait a few polls for its end.
      if (nl >= 0 || rest.length >= 64 || ++seenFor >= 5)
        return (nl < 0 ? rest : rest.slice(0, nl)).slice(0, 64).replace(/\r$/, '');
      carry = carry.slice(at);
    } else carry = carry.slice(-line.length);
    if (i % 10 === 9 && !(await opts.alive()))
      throw new BangerError(ErrorCode.Unavailable, 'the VM stopped during boot', {
        hint: 'see the console with `banger vm logs NAME`',
      });
    if (offset === 0 && opts.silentMs !== undefined && Date.now() - started > opts.silentMs)
      throw new EarlyBootStall(`the guest printed nothing for ${secs(opts.silentMs)} s`);
    if (offset > 0 && kernelOnly && pending === '' && opts.silentMs !== undefined && Date.now() - grewAt > 2 * opts.silentMs)
      throw new EarlyBootStall(`the guest printed nothing after its first kernel lines for ${secs(2 * opts.silentMs)} s`);
    if (Date.now() > opts.deadline)
      throw new BangerError(ErrorCode.DeadlineExceeded, `the guest did not finish booting (no "${line}" on its console)`, {
        hint: 'see the console with `banger vm logs NAME`',
      });
    await sleep(opts.intervalMs ?? 100, undefined, { signal: opts.signal });
  }
}

/** Size at which the live console log is rotated; the log and its one rotated copy stay under twice this. */
export const CONSOLE_LOG_MAX_BYTES = 1024 * 1024;

/** Keeps a console log under its cap (see capLog); true when it rotated. */
export function capConsoleLog(path: string, maxBytes = CONSOLE_LOG_MAX_BYTES): Promise<boolean> {
  return capLog(path, maxBytes);
}

/** Keeps a running VM's console log under its cap every `intervalMs` until `signal` aborts. */
export function keepConsoleLogCapped(path: string, intervalMs: number, signal: AbortSignal): void {
  keepLogCapped(path, CONSOLE_LOG_MAX_BYTES, intervalMs, signal);
}

/** The last `tailBytes` of a console log, across its rotated copy; '' when there is none. */
export async function readConsoleTail(path: string, tailBytes: number): Promise<string> {
  const parts: Buffer[] = [];
  let want = tailBytes;
  for (const p of [path, rotatedLog(path)]) {
    if (want <= 0) break;
    try {
      const fh = await open(p, 'r');
      try {
        const { size } = await fh.stat();
        const len = Math.min(size, want);
        const buf = Buffer.alloc(len);
        await fh.read(buf, 0, len, size - len);
        parts.unshift(buf);
        want -= len;
      } finally {
        await fh.close();
      }
    } catch {
      /* no such file: nothing from it */
    }
  }
  return Buffer.concat(parts).toString('utf8');
}

/**
 * A boot failure with the console's last lines added to its message, escaped (they come from the guest):
 * the error is then enough to see where the boot stopped, even for a `--rm` VM whose log is deleted with it.
 */
export async function withConsoleTail(e: unknown, path: string, lines = 8): Promise<unknown> {
  if (!isBangerError(e) || (e.code !== ErrorCode.DeadlineExceeded && e.code !== ErrorCode.Unavailable)) return e;
  const tail = (await readConsoleTail(path, 4096))
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '')
    .slice(-lines);
  const shown = tail.length
    ? `; its console ended with:\n${tail.map((l) => `  | ${escapeForTerminal(l).slice(0, 200)}`).join('\n')}`
    : '; its console is empty (the guest printed nothing)';
  return new BangerError(e.code, `${e.message}${shown}`, { hint: e.hint });
}
