import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { AgentSessionInfo } from '../protocol/agent-sessions.js';
import { AgentFailure } from './channel.js';

/** A follower re-reads at least this often even without a notification (a safety net, not the mechanism). */
const FOLLOW_FALLBACK_MS = 1000;

export interface SessionMeta {
  name: string;
  /** The command as asked for (and shown). */
  argv: string[];
  /** The command started, when it is not argv (under `mise exec`). */
  run?: string[];
  cwd: string;
  tty: boolean;
  size: { cols: number; rows: number } | null;
  startedAt: string;
  capBytes: number;
}

export interface ExitRecord {
  state: 'exited' | 'ended';
  exitCode: number | null;
  signal: string | null;
  endedAt: string | null;
}

/** One session, as the agent sees it; shared by every connection. */
export class Session {
  pid: number | null = null;
  exit: ExitRecord | null = null;
  /** Who holds the exclusive attach: the holder token and how it described itself. */
  attachedBy: { holder: object; client: string } | null = null;
  private watch: Socket | null = null;
  private change = deferred();
  private stdinTail: Promise<void> = Promise.resolve();

  constructor(
    readonly dir: string,
    readonly meta: SessionMeta,
  ) {}

  get name(): string {
    return this.meta.name;
  }

  get running(): boolean {
    return this.exit === null;
  }

  file(name: string): string {
    return join(this.dir, name);
  }

  /** Resolves at the next change (output written, the end recorded, the session removed), or after `ms`. */
  changed(ms = FOLLOW_FALLBACK_MS): { next: () => Promise<void> } {
    const change = this.change.promise;
    return {
      next: () =>
        new Promise((resolve) => {
          const t = setTimeout(resolve, ms);
          void change.then(() => {
            clearTimeout(t);
            resolve();
          });
        }),
    };
  }

  notify(): void {
    const d = this.change;
    this.change = deferred();
    d.resolve();
  }

  async info(): Promise<AgentSessionInfo> {
    const size = (f: string) =>
      stat(this.file(f)).then(
        (s) => s.size,
        () => 0,
      );
    const [stdoutBytes, stderrBytes, capped] = await Promise.all([
      size('stdout.log'),
      size('stderr.log'),
      stat(this.file('capped')).then(
        () => true,
        () => false,
      ),
    ]);
    const m = this.meta;
    return {
      name: m.name,
      pid: this.running ? this.pid : null,
      state: this.exit?.state ?? 'running',
      exitCode: this.exit?.exitCode ?? null,
      signal: this.exit?.signal ?? null,
      argv: m.argv,
      tty: m.tty,
      cwd: m.cwd,
      startedAt: m.startedAt,
      endedAt: this.exit?.endedAt ?? null,
      stdoutBytes,
      stderrBytes,
      capBytes: m.capBytes,
      capped,
      attachedBy: this.attachedBy?.client ?? null,
    };
  }

  /**
   * Follows the supervisor: its watch connection brings a byte after each output write and closes once the
   * end is recorded (or the supervisor died). Then the end is read from `exit.json`, or recorded as `ended`.
   */
  watchSupervisor(): void {
    const sock = connect(this.file('ctl.sock'));
    this.watch = sock;
    sock.on('connect', () => sock.write('W'));
    sock.on('data', () => this.notify());
    sock.on('error', () => {});
    sock.on('close', () => {
      if (this.watch === sock) this.watch = null;
      void this.recordEnd();
    });
  }

  /** Stops following (the session is being removed). */
  unwatch(): void {
    const w = this.watch;
    this.watch = null;
    w?.destroy();
  }

  private async recordEnd(): Promise<void> {
    const recorded = await readJson<ExitRecord>(this.file('exit.json'));
    if (recorded !== null) this.exit = recorded;
    else {
      // On disk before anyone is told: an agent started next (after a guest reboot) reads the same end.
      const ended: ExitRecord = { state: 'ended', exitCode: null, signal: null, endedAt: new Date().toISOString() };
      await writeJsonAtomic(this.file('exit.json'), ended).catch(() => {});
      this.exit = ended;
    }
    this.notify();
  }

  /** Runs `body` holding the session's stdin: one send at a time, in the order they asked. */
  async withStdin<T>(body: () => Promise<T>): Promise<T> {
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const prev = this.stdinTail;
    this.stdinTail = prev.then(() => mine);
    await prev;
    try {
      return await body();
    } finally {
      release();
    }
  }

  /** Opens an input connection: what is written to it goes to the process's stdin, whole. */
  openInput(): Promise<InputConnection> {
    return new Promise((resolve, reject) => {
      // A full listen backlog (EAGAIN: many connections at once on a loaded guest) is not a gone supervisor.
      const attempt = (left: number) => {
        const sock = connect(this.file('ctl.sock'));
        sock.once('error', (e: NodeJS.ErrnoException) => {
          if (e.code === 'EAGAIN' && left > 0) setTimeout(() => attempt(left - 1), 10);
          else reject(this.exited());
        });
        sock.once('connect', () => {
          sock.write('I');
          resolve(new InputConnection(sock));
        });
      };
      attempt(200);
    });
  }

  /** A one-shot supervisor command (`E`, `S`, `R`); false when the supervisor is gone. */
  command(op: string, arg = ''): Promise<boolean> {
    return new Promise((resolve) => {
      const sock = connect(this.file('ctl.sock'));
      let answer = '';
      sock.on('error', () => resolve(false));
      sock.on('connect', () => sock.end(op + arg));
      sock.on('data', (b: Buffer) => (answer += b.toString()));
      sock.on('close', () => resolve(answer === 'K'));
    });
  }

  exited(): AgentFailure {
    return new AgentFailure(
      'FailedPrecondition',
      `session ${this.name} has ended, so it reads no more input; see its output with \`banger vm session logs\``,
    );
  }
}

/** One send's connection to the supervisor; `finish` ends it and says whether every byte reached stdin. */
export class InputConnection {
  private readonly answer: Promise<boolean>;

  constructor(readonly sock: Socket) {
    let got = '';
    sock.on('data', (b: Buffer) => (got += b.toString()));
    sock.on('error', () => {});
    this.answer = new Promise((resolve) => sock.once('close', () => resolve(got === 'K')));
  }

  write(b: Buffer, cb: () => void): void {
    if (this.sock.destroyed) cb();
    else this.sock.write(b, cb);
  }

  finish(): Promise<boolean> {
    this.sock.end();
    return this.answer;
  }
}

export async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch {
    return null;
  }
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, JSON.stringify(value), { mode: 0o600 });
  await rename(tmp, path);
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}
