import { spawn } from 'node:child_process';
import { BangerError, ErrorCode } from '../errors/index.js';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  signal?: AbortSignal;
  /** Called with each chunk of stderr+stdout as it arrives (for progress/logging). */
  onOutput?: (chunk: string) => void;
  /** Do not throw on a non-zero exit. */
  allowFailure?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a host command to completion. The injectable seam for everything that shells out. */
export type CommandRunner = (cmd: string, args: readonly string[], opts?: RunOptions) => Promise<RunResult>;

export const runCommand: CommandRunner = (cmd, args, opts = {}) =>
  new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      signal: opts.signal,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      opts.onOutput?.(d);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      opts.onOutput?.(d);
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.name === 'AbortError') reject(new BangerError(ErrorCode.Cancelled, `${cmd}: cancelled`));
      else if (err.code === 'ENOENT')
        reject(
          new BangerError(ErrorCode.FailedPrecondition, `${cmd} is not installed`, {
            hint: 'run `banger doctor` to see what is missing',
          }),
        );
      else reject(new BangerError(ErrorCode.Internal, `${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, sig) => {
      const result = { code: code ?? 128 + (sig ? 9 : 0), stdout, stderr };
      if (result.code !== 0 && !opts.allowFailure) {
        const tail = (stderr || stdout).trim().split('\n').slice(-15).join('\n');
        reject(new BangerError(ErrorCode.Internal, `${cmd} ${args.join(' ')} failed (exit ${result.code}):\n${tail}`));
      } else resolve(result);
    });
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
