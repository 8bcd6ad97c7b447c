import { closeSync, constants, fstatSync, openSync, writeSync } from 'node:fs';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { connect, Socket } from 'node:net';
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

  /**
   * Opens the process's stdin (the supervisor's FIFO) for one send; call it holding `withStdin`. Fails when the
   * stdin was closed (`E` removed the FIFO) or nothing reads it any more (the process has gone: ENXIO).
   */
  openInput(): InputConnection {
    let fd: number;
    try {
      fd = openSync(this.file('stdin'), constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
    } catch {
      throw this.notReading();
    }
    if (!fstatSync(fd).isFIFO()) {
      closeSync(fd);
      throw this.notReading();
    }
    return new InputConnection(fd);
  }

  /** Why a send found no reader: the session has ended, or its process no longer reads its stdin. */
  notReading(): AgentFailure {
    if (!this.running) return this.exited();
    return new AgentFailure(
      'FailedPrecondition',
      `session ${this.name} is running but no longer reads its stdin (the process closed it, or an attach's input ` +
        'ended it); see its output with `banger vm session logs`',
    );
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

/**
 * One send's writer of the process's stdin; `finish` closes it and says whether every byte reached the pipe.
 * Bytes are written at once while the pipe has room (a socket's setup cost a send several ms in a TCG guest);
 * once it is full, the rest goes through a socket on the same descriptor, which waits for the reader.
 */
export class InputConnection {
  private sock: Socket | null = null;
  private sockClosed: Promise<void> = Promise.resolve();
  private failed = false;

  constructor(private readonly fd: number) {}

  write(b: Buffer, cb: () => void): void {
    if (this.sock) {
      if (this.sock.destroyed) cb();
      else this.sock.write(b, cb);
      return;
    }
    if (this.failed) return cb();
    let off = 0;
    try {
      while (off < b.length) off += writeSync(this.fd, b, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') {
        this.failed = true; // EPIPE: the process closed its stdin or ended
        return cb();
      }
      const sock = new Socket({ fd: this.fd, readable: false, writable: true });
      sock.on('error', () => (this.failed = true));
      sock.on('finish', () => sock.destroy());
      this.sockClosed = new Promise((resolve) => sock.once('close', () => resolve()));
      this.sock = sock;
      sock.write(b.subarray(off), cb);
      return;
    }
    cb();
  }

  finish(): Promise<boolean> {
    const sock = this.sock;
    if (!sock) {
      closeSync(this.fd);
      return Promise.resolve(!this.failed);
    }
    sock.end();
    return this.sockClosed.then(() => !this.failed);
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
