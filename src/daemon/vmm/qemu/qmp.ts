import { createConnection, type Socket } from 'node:net';
import { BangerError, ErrorCode, cancelled, unavailable } from '../../../errors/index.js';

/**
 * A small QEMU Machine Protocol client over a unix socket.
 *
 * QMP is newline-delimited JSON: a greeting, then `qmp_capabilities`, then commands whose replies carry
 * the `id` we sent; asynchronous events (`{"event": ...}`) may arrive between any two replies.
 * QEMU serves one client per QMP monitor at a time: connect, do the work, close.
 */

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpCallOptions {
  signal?: AbortSignal;
  /** Gives up on the reply after this long (default 10 s). */
  timeoutMs?: number;
}

export type QmpConnectOptions = QmpCallOptions;

/** QEMU answered a command with an error object. */
export class QmpCommandError extends BangerError {
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    readonly desc: string,
  ) {
    super(ErrorCode.Internal, `QEMU refused '${command}': ${desc} (${qmpClass})`, {
      hint: "see the VM's vmm.log; the VM may need `banger vm stop --force`",
    });
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  cleanup: () => void;
}

type Message = Record<string, unknown>;

export class QmpClient {
  /** Resolves when the connection is gone (QEMU exited, or close() was called). Never rejects. */
  readonly closed: Promise<void>;
  private greetingValue: QmpGreeting | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private greetingWaiter: { resolve: (g: QmpGreeting) => void; reject: (e: Error) => void } | undefined;
  private isClosed = false;
  private closeReason: Error | undefined;
  private markClosed!: () => void;

  private constructor(
    private readonly socket: Socket,
    private readonly path: string,
  ) {
    this.closed = new Promise<void>((resolve) => (this.markClosed = resolve));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(err));
    socket.on('close', () => this.shutdown());
  }

  /**
   * Connects to the QMP socket at `path`, reads the greeting and negotiates capabilities.
   * Rejects with an Unavailable BangerError when nothing listens there.
   */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    opts.signal?.throwIfAborted();
    const socket = createConnection({ path });
    const client = new QmpClient(socket, path);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    try {
      await client.withDeadline(
        new Promise<QmpGreeting>((resolve, reject) => {
          client.greetingWaiter = { resolve, reject };
        }),
        'greeting',
        { signal: opts.signal, timeoutMs },
      );
      await client.execute('qmp_capabilities', undefined, { signal: opts.signal, timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /** QEMU's version and capabilities, as announced when the connection opened. */
  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw new Error('QMP greeting not received yet');
    return this.greetingValue;
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** Runs a QMP command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpCallOptions = {}): Promise<T> {
    if (this.isClosed) return Promise.reject(this.closedError());
    const id = `banger-${this.nextId++}`;
    const msg: Message = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    const reply = new Promise<unknown>((resolve, reject) => {
      this.pending.set(id, { command, resolve, reject, cleanup: () => this.pending.delete(id) });
    });
    this.socket.write(`${JSON.stringify(msg)}\n`);
    return this.withDeadline(reply, command, opts, () => this.pending.delete(id)) as Promise<T>;
  }

  /** Calls `listener` with every asynchronous event; returns a function that removes it. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the next event named `name` (e.g. SHUTDOWN). */
  waitEvent(name: string, opts: QmpCallOptions = {}): Promise<QmpEvent> {
    let off: () => void = () => {};
    const p = new Promise<QmpEvent>((resolve, reject) => {
      if (this.isClosed) return reject(this.closedError());
      off = this.onEvent((e) => {
        if (e.event === name) resolve(e);
      });
      void this.closed.then(() => reject(this.closedError()));
    });
    return this.withDeadline(p, `event ${name}`, opts).finally(off);
  }

  /** Closes the connection; pending commands reject. */
  close(): void {
    this.socket.destroy();
    this.shutdown();
  }

  private closedError(): BangerError {
    if (!this.greetingValue)
      return unavailable(
        `cannot reach QEMU's control socket ${this.path}${this.closeReason ? `: ${this.closeReason.message}` : ''}`,
        'the VM is not running (or is still starting); `banger vm ls` shows its state',
      );
    return unavailable(
      `QEMU's control socket ${this.path} closed${this.closeReason ? `: ${this.closeReason.message}` : ''}`,
      'the VM has probably stopped; `banger vm ls` shows its state',
    );
  }

  private withDeadline<T>(p: Promise<T>, what: string, opts: QmpCallOptions, onGiveUp?: () => void): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        onGiveUp?.();
        reject(
          new BangerError(ErrorCode.DeadlineExceeded, `QEMU did not answer '${what}' within ${timeoutMs} ms`, {
            hint: 'the VMM may be stuck; `banger vm stop --force` ends it',
          }),
        );
      }, timeoutMs);
      const onAbort = () => {
        finish();
        onGiveUp?.();
        reject(cancelled(`QMP '${what}' cancelled`));
      };
      const finish = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          finish();
          resolve(v);
        },
        (e: unknown) => {
          finish();
          reject(e instanceof Error ? e : new Error(String(e)));
        },
      );
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line.length === 0) continue;
      let msg: Message;
      try {
        msg = JSON.parse(line) as Message;
      } catch {
        this.shutdown(new Error(`unparsable QMP message: ${line.slice(0, 200)}`));
        this.socket.destroy();
        return;
      }
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Message): void {
    if ('QMP' in msg) {
      this.greetingValue = msg.QMP as QmpGreeting;
      this.greetingWaiter?.resolve(this.greetingValue);
      this.greetingWaiter = undefined;
      return;
    }
    if (typeof msg.event === 'string') {
      for (const l of [...this.listeners]) l(msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p) return; // a reply to a command we gave up on
    p.cleanup();
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, e.class ?? 'GenericError', e.desc ?? 'unknown error'));
    } else p.resolve(msg.return);
  }

  private shutdown(err?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeReason = err;
    const e = this.closedError();
    this.greetingWaiter?.reject(e);
    this.greetingWaiter = undefined;
    for (const p of [...this.pending.values()]) {
      p.cleanup();
      p.reject(e);
    }
    this.markClosed();
  }
}
