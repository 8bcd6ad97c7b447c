import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

/** A process the agent started: its streams, its pid (also its process group), and its end. */
export interface Spawned {
  pid: number;
  stdin: Writable | null;
  /** May come paused: the reader attaches its listeners, then resumes. */
  stdout: Readable;
  stderr: Readable;
  /** fd 3 of a pty exec (the pty helper's window-size channel). */
  control: Writable | null;
  /** Called once, when the process has ended (its output may still be draining). */
  onExit(cb: (code: number | null, signal: string | null) => void): void;
}

export interface SpawnRequest {
  file: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdin: boolean;
  /** A pipe as fd 3 (the pty helper's control channel). */
  control?: boolean;
}

/** Starts processes for exec channels; rejects with an Error whose `code` is the errno name (ENOENT...). */
export interface Spawner {
  spawn(req: SpawnRequest): Promise<Spawned>;
}

/** Node's own spawn: a fork of the agent, then exec (tens of ms under software emulation). */
export const nodeSpawner: Spawner = {
  async spawn(req) {
    const stdio: ('pipe' | 'ignore')[] = [req.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'];
    if (req.control) stdio.push('pipe');
    const child: ChildProcess = spawn(req.file, req.args, { cwd: req.cwd, env: req.env, stdio, detached: true });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    child.on('error', () => {}); // a failed kill after the start; the exit event still comes
    return {
      pid: child.pid!,
      stdin: child.stdin,
      stdout: child.stdout!,
      stderr: child.stderr!,
      control: (child.stdio[3] as Writable | null | undefined) ?? null,
      onExit: (cb) => void child.once('exit', cb),
    };
  },
};
