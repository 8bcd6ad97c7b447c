import type { Spawned, Spawner } from './spawner.js';
import { AgentFailure } from './channel.js';

/** How long `prespawn` waits for the process's first output (its sign that it is ready) before replying anyway. */
const FIRST_OUTPUT_MS = 10_000;

interface Held {
  argv: string[];
  child: Spawned;
  exited: boolean;
  /** Who the exit goes to once the process is taken. */
  onExit: ((code: number | null, signal: string | null) => void) | null;
  /** Set while `start` waits for the first output. */
  onReadable: (() => void) | null;
}

/**
 * Processes started ahead of the command that uses them, held by the agent rather than by a connection, so
 * that a later `exec` of `{ prespawned: key }` takes one already running, on whatever connection asks. The use
 * it exists for: a snapshot's guest holds the identity program, started and waiting, and every VM restored
 * from the snapshot (a connection restart later) takes its own copy of it instead of starting one in a guest
 * whose code cache is empty (a process start there costs most of a restore's identity step). Held processes
 * read nothing and their output waits in their pipes until taken.
 */
export class PrespawnedProcesses {
  private readonly held = new Map<string, Held>();

  constructor(
    private readonly spawner: Spawner,
    private readonly max = 4,
  ) {}

  /**
   * Starts `argv` under `key` and resolves once it has written or ended; at once when the same `argv` is held
   * there and running (a VM snapshotted again keeps the one it held), else replacing what is held there.
   */
  async start(key: string, argv: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<{ pid: number }> {
    const now = this.held.get(key);
    if (now && !now.exited && now.argv.length === argv.length && now.argv.every((a, i) => a === argv[i])) return { pid: now.child.pid };
    this.discard(key);
    if (this.held.size >= this.max) throw new AgentFailure('ResourceExhausted', `at most ${this.max} prespawned processes are held`);
    let child: Spawned;
    try {
      child = await this.spawner.spawn({ file: argv[0]!, args: argv.slice(1), cwd, env, stdin: true });
    } catch (e) {
      throw spawnFailure(e, argv[0]!);
    }
    const h: Held = { argv, child, exited: false, onExit: null, onReadable: null };
    this.held.set(key, h);
    child.stdin?.on('error', () => {});
    const ended = new Promise<void>((resolve) =>
      child.onExit((code, signal) => {
        h.exited = true;
        h.onExit?.(code, signal);
        resolve();
      }),
    );
    // 'readable' leaves what it finds in the stream's buffer, for whoever takes the process; the listener goes
    // once it is not needed (with one attached, the taker's resume() would do nothing).
    const wrote = new Promise<void>((resolve) => (h.onReadable = resolve));
    child.stdout.once('readable', h.onReadable!);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([wrote, ended, new Promise<void>((resolve) => (timer = setTimeout(resolve, FIRST_OUTPUT_MS)))]);
    clearTimeout(timer);
    unlisten(h);
    return { pid: child.pid };
  }

  /** The process held under `key`, no longer held; undefined when there is none or it has ended. */
  take(key: string): Spawned | undefined {
    const h = this.held.get(key);
    if (!h) return undefined;
    this.held.delete(key);
    if (h.exited) return undefined;
    unlisten(h); // taken before its prespawn was answered
    return {
      ...h.child,
      onExit: (cb) => {
        h.onExit = cb;
      },
    };
  }

  /** Kills the process held under `key`, if any. */
  discard(key: string): void {
    const h = this.held.get(key);
    if (!h) return;
    this.held.delete(key);
    try {
      process.kill(-h.child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function unlisten(h: Held): void {
  if (h.onReadable) h.child.stdout.off('readable', h.onReadable);
  h.onReadable = null;
}

/** The failure an exec reports for a process that could not start. */
export function spawnFailure(e: unknown, file: string): AgentFailure {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new AgentFailure('NotFound', `no command ${file} in the guest`);
  if (code === 'EACCES') return new AgentFailure('FailedPrecondition', `${file} is not executable in the guest`);
  return new AgentFailure('Internal', `could not start ${file}: ${(e as Error).message}`);
}
