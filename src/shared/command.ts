import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { BangerError, ErrorCode } from '../errors/index.js';

/**
 * The one way banger runs a host command to completion, used by the daemon (through injected
 * CommandRunner dependencies) and by the CLI (`--dry-run`, the dirty check of `vm exec`).
 */

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Bytes fed to stdin; omitted: stdin is /dev/null. */
  input?: string | Buffer;
  signal?: AbortSignal;
  /** Called with each chunk of stderr+stdout as it arrives (for progress/logging). */
  onOutput?: (chunk: string) => void;
  /** Do not throw on a non-zero exit. */
  allowFailure?: boolean;
  /**
   * Bytes of stdout and of stderr (each) kept in the result; beyond it only the last bytes are kept
   * and `truncated` is set. Default DEFAULT_MAX_OUTPUT_BYTES. Callers that parse all of stdout pass a
   * larger cap and check `truncated`.
   */
  maxOutputBytes?: number;
  /**
   * Hands stdout on chunk by chunk as it arrives instead of keeping it (the result's stdout is then
   * empty): for listings too large to hold whole (records.ts). A throw stops the command and fails the run.
   */
  onStdout?: (chunk: Buffer) => void;
}

export interface RunResult {
  /** The exit status; 128+N when the command died of signal N (what a shell reports). */
  code: number;
  stdout: string;
  stderr: string;
  /** Set when stdout or stderr went over maxOutputBytes and only its tail was kept. */
  truncated?: { stdout: boolean; stderr: boolean };
}

/** Runs a host command to completion. The injectable seam for everything that shells out. */
export type CommandRunner = (cmd: string, args: readonly string[], opts?: RunOptions) => Promise<RunResult>;

/** Output kept per stream by default: plenty for every message and listing, bounded for a chatty command. */
export const DEFAULT_MAX_OUTPUT_BYTES = 16 << 20;

/**
 * A process's exit status as a shell reports it: its exit code, or 128 + N for death by signal N (a signal
 * this host does not know counts as SIGHUP's 1: the process is gone, and 128 alone would read as "signal 0").
 * Neither (never seen from a real process) is a plain failure, 1.
 */
export function shellStatus(code: number | null, signal: string | null): number {
  if (code !== null) return code;
  if (signal === null) return 1;
  const n = (constants.signals as Record<string, number | undefined>)[signal];
  return 128 + (n ?? 1);
}

/** Keeps the last `max` bytes pushed into it (memory stays near `max` whatever the input). */
export class TailBuffer {
  private parts: Buffer[] = [];
  private size = 0;
  truncated = false;

  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    this.parts.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.parts.length > 0) {
      const first = this.parts[0] as Buffer;
      const excess = this.size - this.max;
      this.truncated = true;
      if (first.length <= excess) {
        this.parts.shift();
        this.size -= first.length;
      } else {
        this.parts[0] = first.subarray(excess);
        this.size -= excess;
      }
    }
  }

  text(): string {
    return Buffer.concat(this.parts, this.size).toString('utf8');
  }
}

export const runCommand: CommandRunner = (cmd, args, opts = {}) =>
  new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      signal: opts.signal,
    });
    const max = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    const out = new TailBuffer(max);
    const err = new TailBuffer(max);
    const collect = (stream: Readable, into: TailBuffer) => {
      const decoder = opts.onOutput ? new StringDecoder('utf8') : null;
      stream.on('data', (d: Buffer) => {
        into.push(d);
        if (decoder) opts.onOutput?.(decoder.write(d));
      });
    };
    let failure: { error: unknown } | undefined;
    const onStdout = opts.onStdout;
    if (child.stdout && onStdout) {
      child.stdout.on('data', (d: Buffer) => {
        if (failure) return;
        try {
          onStdout(d);
        } catch (e) {
          failure = { error: e };
          child.kill();
        }
      });
    } else if (child.stdout) collect(child.stdout, out);
    if (child.stderr) collect(child.stderr, err);
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.name === 'AbortError') reject(new BangerError(ErrorCode.Cancelled, `${cmd}: cancelled`));
      else if (e.code === 'ENOENT')
        reject(
          new BangerError(ErrorCode.FailedPrecondition, `${cmd} is not installed`, {
            hint: `install ${cmd}; \`banger doctor\` lists what banger needs`,
          }),
        );
      else reject(new BangerError(ErrorCode.Internal, `${cmd}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, sig) => {
      // Killed by us on abort ('error' has usually rejected already; a second reject is a no-op).
      if (opts.signal?.aborted) return reject(new BangerError(ErrorCode.Cancelled, `${cmd}: cancelled`));
      if (failure) return reject(failure.error);
      const stdout = out.text();
      const stderr = err.text();
      const result: RunResult = { code: shellStatus(code, sig), stdout, stderr };
      if (out.truncated || err.truncated) result.truncated = { stdout: out.truncated, stderr: err.truncated };
      if (result.code !== 0 && !opts.allowFailure) {
        const tail = (stderr || stdout).trim().split('\n').slice(-15).join('\n');
        reject(new BangerError(ErrorCode.Internal, `${cmd} ${args.join(' ')} failed (exit ${result.code}):\n${tail}`));
      } else resolve(result);
    });
    if (child.stdin) {
      // A command may exit without reading all of its input: that is its answer, not an error here.
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input);
    }
  });

/**
 * `env` with the sbin directories on PATH: mkfs.ext4, mmdebstrap's helpers and others live there, and a normal
 * user's PATH on Debian has none of them.
 */
export function withSbinPath(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const parts = (env.PATH ?? '/usr/bin:/bin').split(':');
  for (const p of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!parts.includes(p)) parts.push(p);
  return { ...env, PATH: parts.join(':') };
}
