import { execFile } from 'node:child_process';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InboundWindow } from '../protocol/agent-flow.js';
import { FrameKind, type WriteFileRequest } from '../protocol/agent.js';
import { AgentFailure, type ChannelIo } from './channel.js';

/**
 * A `writeFile` channel: the content arrives as stdin frames and goes to a temporary file next to the target,
 * which is fsynced, given `mode` and renamed over the target at the end, so a reader sees the old file or the
 * new one, never half of it. Credit is granted as bytes reach the file, so the agent holds at most a window.
 */
export class WriteFileChannel {
  private readonly window = new InboundWindow();
  private readonly tmp: string;
  private chain: Promise<FileHandle | null>;
  private bytes = 0;
  private failed: AgentFailure | null = null;
  private finished = false;

  constructor(
    private readonly req: WriteFileRequest,
    private readonly io: ChannelIo,
    /** Called once with the outcome: the reply to the request. */
    private readonly done: (result: { bytes: number } | AgentFailure) => void,
  ) {
    // Opened with O_EXCL ('wx'), so the name needs to be unlikely to collide, not unpredictable: no node:crypto
    // (loading it cost the agent's idle RSS ~1 MiB in a guest).
    const unique = `${process.pid.toString(36)}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    this.tmp = join(dirname(req.path), `.${basename(req.path)}.banger-${unique}`);
    this.chain = open(this.tmp, 'wx', req.mode).catch((e: NodeJS.ErrnoException) => {
      this.fail(fileFailure(e, req.path));
      return null;
    });
  }

  /** Content bytes; an empty payload ends the file. False when the daemon overran its credit. */
  stdin(payload: Buffer): boolean {
    if (this.finished) return true;
    if (payload.length === 0) {
      this.finished = true;
      void this.chain.then((fh) => this.commit(fh));
      return true;
    }
    if (!this.window.accept(payload.length)) return false;
    const n = payload.length;
    this.chain = this.chain.then(async (fh) => {
      if (fh !== null && this.failed === null) {
        try {
          await fh.write(payload);
          this.bytes += n;
        } catch (e) {
          this.fail(fileFailure(e as NodeJS.ErrnoException, this.req.path));
        }
      }
      this.io.sendCredit(FrameKind.Stdin, this.window.consumed(n));
      return fh;
    });
    return true;
  }

  /** The connection is gone: drop the temporary file. */
  dispose(): void {
    this.finished = true;
    void this.chain.then(async (fh) => {
      await fh?.close().catch(() => {});
      await unlink(this.tmp).catch(() => {});
    });
  }

  private async commit(fh: FileHandle | null): Promise<void> {
    if (fh === null) return;
    try {
      if (this.failed === null) {
        await fh.chmod(this.req.mode); // open()'s mode went through the umask
        await fh.sync();
      }
      await fh.close();
      if (this.failed !== null) throw this.failed;
      await rename(this.tmp, this.req.path);
      this.done({ bytes: this.bytes });
    } catch (e) {
      await unlink(this.tmp).catch(() => {});
      this.fail(e instanceof AgentFailure ? e : fileFailure(e as NodeJS.ErrnoException, this.req.path));
    }
  }

  /** Reports the first failure at once; later content is taken (and credited) but dropped. */
  private fail(f: AgentFailure): void {
    if (this.failed !== null) return;
    this.failed = f;
    this.done(f);
  }
}

function fileFailure(e: NodeJS.ErrnoException, path: string): AgentFailure {
  if (e.code === 'ENOENT') return new AgentFailure('NotFound', `no directory ${dirname(path)} in the guest`);
  if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS')
    return new AgentFailure('FailedPrecondition', `cannot write ${path} in the guest: ${e.code}`);
  if (e.code === 'EISDIR') return new AgentFailure('FailedPrecondition', `${path} is a directory in the guest`);
  if (e.code === 'ENOSPC') return new AgentFailure('ResourceExhausted', `the guest's disk is full writing ${path}`);
  return new AgentFailure('Internal', `writing ${path} in the guest failed: ${e.message}`);
}

/** Runs a command to completion; rejects with its stderr. Injected into the server so tests need no root. */
export type CommandRunner = (argv: readonly string[]) => Promise<void>;

export const runCommand: CommandRunner = (argv) =>
  new Promise((resolve, reject) => {
    execFile(argv[0], argv.slice(1), { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (err)
        reject(
          new AgentFailure('FailedPrecondition', `${argv.join(' ')} failed: ${String(stderr).trim() || err.message}`),
        );
      else resolve();
    });
  });

/** The argv that sets the wall clock to `epochMs` (GNU date takes fractional epoch seconds after `@`). */
export function setClockArgv(epochMs: number): string[] {
  return ['date', '-u', '-s', `@${(epochMs / 1000).toFixed(3)}`];
}
