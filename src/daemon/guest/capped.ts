import { Writable } from 'node:stream';
import { BangerError, ErrorCode } from '../../errors/index.js';
import type { GuestSession } from './session.js';

/** The result of a guest command whose output was collected whole. */
export interface CapturedResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` in the guest and collects its output as text, treating the guest as hostile: at most
 * `maxBytes` of stdout and stderr together (past that the command is stopped and ResourceExhausted thrown)
 * and at most `timeoutMs` of wall time (DeadlineExceeded).
 */
export async function capturedExec(
  session: GuestSession,
  command: string,
  opts: { maxBytes: number; timeoutMs: number; signal?: AbortSignal },
): Promise<CapturedResult> {
  const stop = new AbortController();
  const timer = new AbortController();
  const t = setTimeout(() => timer.abort(), opts.timeoutMs);
  const signal = AbortSignal.any([stop.signal, timer.signal, ...(opts.signal ? [opts.signal] : [])]);
  let total = 0;
  const sink = (into: Buffer[]) =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        total += chunk.length;
        if (total > opts.maxBytes) stop.abort();
        else into.push(chunk);
        cb();
      },
    });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  try {
    const r = await session.exec(command, { stdout: sink(out), stderr: sink(err), signal });
    return { code: r.code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  } catch (e) {
    if (stop.signal.aborted)
      throw new BangerError(ErrorCode.ResourceExhausted, `the guest wrote more than ${opts.maxBytes} bytes for \`${command.slice(0, 80)}\`; it was stopped`);
    if (timer.signal.aborted && !opts.signal?.aborted)
      throw new BangerError(ErrorCode.DeadlineExceeded, `the guest did not answer \`${command.slice(0, 80)}\` within ${Math.round(opts.timeoutMs / 1000)} s`);
    throw e;
  } finally {
    clearTimeout(t);
  }
}
