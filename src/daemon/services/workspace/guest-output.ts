import type { Readable } from 'node:stream';
import { Writable } from 'node:stream';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { TailBuffer } from '../../../shared/command.js';
import type { GuestSession } from '../../guest/session.js';

/** Limits on what one workspace script in the guest may send back. */
export interface GuestOutputLimits {
  /** Bytes of stdout kept; more stops the command with `tooLarge()`'s error. */
  maxStdoutBytes: number;
  /** Bytes of stderr kept: only the last ones (error messages are at the end), never an error. */
  maxStderrBytes: number;
  /**
   * The command fails when neither stdout nor stderr brought a byte for this long. The workspace
   * scripts write an empty stderr line every few seconds while they work (HEARTBEAT), so only a
   * guest that hangs or stalls on purpose runs into it.
   */
  idleTimeoutMs: number;
  /** The error for stdout over maxStdoutBytes. */
  tooLarge: () => BangerError;
  /** What the command does, for the timeout message ("the workspace export"). */
  what: string;
}

export interface GuestOutput {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs a workspace script in the guest with its output treated as hostile: stdout is collected up to
 * a cap, stderr keeps only its tail, and silence longer than the idle timeout stops the command.
 * Either way the command is killed (its channel closed) and the connection stays usable.
 */
export async function runGuestScript(
  session: GuestSession,
  command: string,
  limits: GuestOutputLimits,
  opts: { stdin?: Readable; stdinBytes?: number; signal?: AbortSignal } = {},
): Promise<GuestOutput> {
  const stop = new AbortController();
  let reason: 'tooLarge' | 'idle' | null = null;
  const halt = (why: 'tooLarge' | 'idle') => {
    reason ??= why;
    stop.abort();
  };
  let timer: NodeJS.Timeout | undefined;
  const touch = () => {
    clearTimeout(timer);
    timer = setTimeout(() => halt('idle'), limits.idleTimeoutMs);
  };

  const out: Buffer[] = [];
  let outBytes = 0;
  const stdout = new Writable({
    write(chunk: Buffer, _enc, cb) {
      touch();
      outBytes += chunk.length;
      if (outBytes > limits.maxStdoutBytes) halt('tooLarge');
      else out.push(chunk);
      cb();
    },
  });
  const err = new TailBuffer(limits.maxStderrBytes);
  const stderr = new Writable({
    write(chunk: Buffer, _enc, cb) {
      touch();
      err.push(chunk);
      cb();
    },
  });

  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  touch();
  try {
    const r = await session.exec(command, { stdin: opts.stdin, stdinBytes: opts.stdinBytes, stdout, stderr, signal });
    if (reason === null) return { code: r.code, stdout: Buffer.concat(out, outBytes), stderr: err.text() };
  } catch (e) {
    if (reason === null || opts.signal?.aborted) throw e;
  } finally {
    clearTimeout(timer);
  }
  if (reason === 'tooLarge') throw limits.tooLarge();
  throw new BangerError(
    ErrorCode.DeadlineExceeded,
    `the guest sent nothing for ${Math.round(limits.idleTimeoutMs / 1000)} s during ${limits.what}, so it was stopped`,
    { hint: 'the VM may be overloaded or hung: check it with `banger vm show`, then try again' },
  );
}
