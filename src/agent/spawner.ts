import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { constants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { AgentFailure } from './channel.js';

/**
 * The agent's side of `banger-spawner` (see spawner-source.ts for the program and its protocol): commands
 * start in that small process, so the agent's own large one never forks. Absent (an older image, a user's
 * own) or broken, the agent spawns with Node as before.
 */

/** A started command, as an exec channel uses it (Node's ChildProcess, or one the spawner started). */
export interface StartedChild {
  pid: number;
  stdin: Writable | null;
  stdout: Readable;
  stderr: Readable;
  /** The pty helper's control pipe (fd 3); Node spawns only. */
  control: Writable | null;
  /** Once, when the process has exited (its streams may still have data). */
  onExit(cb: (code: number | null, signal: string | null) => void): void;
}

export interface SpawnRequest {
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string | undefined>;
  stdin: boolean;
}

/** Commands started through the spawner at once; more start with Node (keeps its descriptors bounded). */
export const SPAWNER_MAX_ACTIVE = 256;

/** The spawner could not be reached or went away before answering: nothing started; use Node's spawn. */
export class SpawnerUnavailable extends Error {}

const SIGNAL_NAMES = new Map(Object.entries(constants.signals).map(([name, n]) => [n as number, name]));

/** Starts processes through a running banger-spawner. */
export class Spawner {
  private nextId = 1;
  private dead = false;
  private active = 0;

  private constructor(
    private readonly socketPath: string,
    private readonly proc: ChildProcess,
    log?: (line: string) => void,
  ) {
    proc.once('exit', (code, signal) => {
      this.dead = true;
      log?.(`banger-agent: banger-spawner exited (${signal ?? code}); commands start with Node from now on`);
    });
  }

  /**
   * Starts `binary` listening on `socketPath`; null (after a log line) when it cannot run, so the caller
   * falls back to Node's spawn.
   */
  static async start(binary: string, socketPath: string, log?: (line: string) => void, timeoutMs = 10_000): Promise<Spawner | null> {
    const proc = spawn(binary, [socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
    const ok = await new Promise<boolean>((resolve) => {
      let seen = '';
      const timer = setTimeout(() => resolve(false), timeoutMs);
      proc.once('error', () => resolve(false));
      proc.once('exit', () => resolve(false));
      proc.stdout!.on('data', (d: Buffer) => {
        seen += d.toString('latin1');
        if (seen.includes('ready\n')) {
          clearTimeout(timer);
          resolve(true);
        }
      });
    });
    if (!ok) {
      log?.(`banger-agent: ${binary} did not start; commands start with Node`);
      proc.kill('SIGKILL');
      return null;
    }
    proc.on('error', () => {});
    proc.stdin!.on('error', () => {});
    proc.stdout!.removeAllListeners('data');
    proc.stdout!.resume();
    // Neither it nor its pipes keep the agent alive; its stdin closing (the agent gone) ends it.
    proc.unref();
    (proc.stdin as unknown as Socket).unref?.();
    (proc.stdout as unknown as Socket).unref?.();
    return new Spawner(socketPath, proc, log);
  }

  /** False once it has exited, or while it runs as many commands as it may. */
  get available(): boolean {
    return !this.dead && this.active < SPAWNER_MAX_ACTIVE;
  }

  stop(): void {
    this.proc.stdin?.end();
  }

  /**
   * Starts a command; rejects with an AgentFailure like Node's spawn errors map to, or SpawnerUnavailable
   * when nothing was started.
   */
  spawn(req: SpawnRequest): Promise<StartedChild> {
    const id = this.nextId++ >>> 0;
    if (this.nextId > 0xffffffff) this.nextId = 1;
    const open = (role: number, extra?: Buffer): Socket => {
      const s = connect(this.socketPath);
      const head = Buffer.alloc(8);
      head.writeUInt32LE(id, 0);
      head[4] = role;
      s.write(extra ? Buffer.concat([head, extra]) : head);
      return s;
    };
    const env = Object.entries(req.env)
      .filter((e): e is [string, string] => e[1] !== undefined)
      .map(([k, v]) => `${k}=${v}`);
    const strings = [req.stdin ? 'i' : '-', req.cwd, String(req.args.length + 1), req.file, ...req.args, String(env.length), ...env];
    const body = Buffer.from(strings.map((s) => `${s}\0`).join(''));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(body.length, 0);
    const control = open(0, Buffer.concat([len, body]));
    const stdin = req.stdin ? open(1) : null;
    const stdout = open(2);
    const stderr = open(3);
    const streams = [control, stdin, stdout, stderr].filter((s): s is Socket => s !== null);
    // Not ended from this side: a shutdown racing the command's exit can fail and lose the stream's end.
    // Its end-of-file ends our side too (allowHalfOpen is off).
    this.active++;
    let counted = true;
    const done = () => {
      if (counted) this.active--;
      counted = false;
    };
    return new Promise<StartedChild>((resolve, reject) => {
      const exits = new EventEmitter();
      let exit: { code: number | null; signal: string | null } | null = null;
      let pid = 0;
      let got = Buffer.alloc(0);
      const fail = (e: Error) => {
        if (pid !== 0) return;
        pid = -1;
        done();
        for (const s of streams) s.destroy();
        reject(e);
      };
      // Any of the connections failing before the answer (the spawner's backlog full, the spawner gone):
      // nothing started.
      for (const s of streams)
        s.on('error', (e) => fail(new SpawnerUnavailable(`banger-spawner: ${e.message}`)));
      control.on('close', () => {
        if (pid === 0) fail(new SpawnerUnavailable('banger-spawner closed the connection'));
        else if (pid > 0 && exit === null) {
          // The spawner died with the command running: nobody will say how it ended.
          done();
          exit = { code: null, signal: 'SIGKILL' };
          exits.emit('exit');
        }
      });
      control.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        while (got.length >= 5) {
          const kind = String.fromCharCode(got[0]!);
          const v = got.readInt32LE(1);
          got = got.subarray(5);
          if (kind === 'P') {
            pid = v;
            resolve({
              pid,
              stdin,
              stdout,
              stderr,
              control: null,
              onExit: (cb) => {
                if (exit) cb(exit.code, exit.signal);
                else exits.once('exit', () => cb(exit!.code, exit!.signal));
              },
            });
          } else if (kind === 'X') {
            done();
            const sig = v & 0x7f;
            exit = sig === 0 ? { code: (v >> 8) & 0xff, signal: null } : { code: null, signal: SIGNAL_NAMES.get(sig) ?? `SIG${sig}` };
            control.destroy();
            exits.emit('exit');
          } else if (kind === 'D') {
            fail(new AgentFailure('NotFound', `no directory ${req.cwd} in the guest`));
          } else {
            fail(errnoFailure(req.file, v));
          }
        }
      });
    });
  }
}

function errnoFailure(file: string, errno: number): AgentFailure {
  if (errno === constants.errno.ENOENT) return new AgentFailure('NotFound', `no command ${file} in the guest`);
  if (errno === constants.errno.EACCES) return new AgentFailure('FailedPrecondition', `${file} is not executable in the guest`);
  const name = Object.entries(constants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
  return new AgentFailure('Internal', `could not start ${file}: ${name}`);
}
