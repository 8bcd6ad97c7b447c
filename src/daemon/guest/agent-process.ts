import { Readable, Writable } from 'node:stream';
import type { BangerError } from '../../errors/index.js';
import { InboundWindow, OutboundWindow, type FrameConnection } from '../../protocol/agent-frames.js';
import { AGENT_DATA_CHUNK, FrameKind, type AgentSignal, type StreamKind } from '../../protocol/agent.js';

/** A guest process as the daemon sees it through the agent (see `agent-client.ts`). */

export interface AgentExitStatus {
  /** The exit code, or null when a signal ended the process. */
  code: number | null;
  /** `SIGTERM` and the like when a signal ended the process. */
  signal: string | null;
}

/** A process running in the guest. */
export interface AgentProcess {
  pid: number;
  /** Reading slowly slows the guest process down (credit flow control); nothing piles up in the daemon. */
  stdout: Readable;
  stderr: Readable;
  /** Null unless `stdin` was asked for. */
  stdin: Writable | null;
  /** Resolves after both output streams have ended; rejects with Unavailable if the connection is lost. */
  exited: Promise<AgentExitStatus>;
  /** Forwards a signal to the process's group. */
  kill(signal?: AgentSignal): void;
  resize(cols: number, rows: number): void;
}

/** What the client routes a channel's frames to. */
export interface ClientChannel {
  /** False when the agent overran its credit. */
  data(stream: StreamKind, payload: Buffer): boolean;
  credit(stream: StreamKind, bytes: number): void;
  exit?(status: AgentExitStatus): void;
  fail(error: BangerError): void;
}

/** The daemon's end of one exec channel. */
export class ExecChannel implements ClientChannel {
  private readonly out = new ConsumerStream(FrameKind.Stdout, this);
  private readonly err = new ConsumerStream(FrameKind.Stderr, this);
  private readonly stdinWindow: OutboundWindow;
  private readonly stdinStream: Writable | null;
  private resolveExit!: (s: AgentExitStatus) => void;
  private rejectExit!: (e: BangerError) => void;
  private readonly exited = new Promise<AgentExitStatus>((res, rej) => {
    this.resolveExit = res;
    this.rejectExit = rej;
  });

  constructor(
    readonly channel: number,
    readonly conn: FrameConnection,
    withStdin: boolean,
  ) {
    this.exited.catch(() => {}); // a caller that never waits must not crash the daemon
    this.stdinWindow = new OutboundWindow((b) => conn.sendData(channel, FrameKind.Stdin, b));
    const win = this.stdinWindow;
    this.stdinStream = withStdin
      ? new Writable({
          highWaterMark: AGENT_DATA_CHUNK,
          write(chunk: Buffer, _enc, cb) {
            if (win.write(chunk, () => cb())) cb();
          },
          final(cb) {
            win.end();
            cb();
          },
        })
      : null;
  }

  handle(pid: number): AgentProcess {
    return {
      pid,
      stdout: this.out.readable,
      stderr: this.err.readable,
      stdin: this.stdinStream,
      exited: this.exited,
      kill: (signal = 'SIGTERM') => {
        if (!this.conn.closed) this.conn.sendControl({ type: 'signal', channel: this.channel, signal });
      },
      resize: (cols, rows) => {
        if (!this.conn.closed) this.conn.sendControl({ type: 'resize', channel: this.channel, cols, rows });
      },
    };
  }

  data(stream: StreamKind, payload: Buffer): boolean {
    return (stream === FrameKind.Stdout ? this.out : this.err).push(payload);
  }

  credit(stream: StreamKind, bytes: number): void {
    if (stream === FrameKind.Stdin) this.stdinWindow.grant(bytes);
  }

  exit(status: AgentExitStatus): void {
    this.stdinWindow.abandon();
    this.out.end();
    this.err.end();
    this.resolveExit(status);
  }

  fail(error: BangerError): void {
    this.stdinWindow.abandon();
    // Ended rather than destroyed: an 'error' nobody listens for would crash the daemon; `exited` says why.
    this.out.end();
    this.err.end();
    this.rejectExit(error);
  }
}

/** One output stream: bytes are handed to the reader and credit goes back as the reader takes them. */
class ConsumerStream {
  private readonly window = new InboundWindow();
  private owed = 0;
  private ended = false;
  readonly readable: Readable;

  constructor(
    private readonly stream: StreamKind,
    private readonly ch: ExecChannel,
  ) {
    this.readable = new Readable({ highWaterMark: AGENT_DATA_CHUNK, read: () => this.grantOwed() });
  }

  /** False when the agent sent more than it was granted. */
  push(payload: Buffer): boolean {
    if (this.ended) return true;
    if (payload.length === 0) {
      this.end();
      return true;
    }
    if (!this.window.accept(payload.length)) return false;
    this.owed += payload.length;
    if (this.readable.push(payload)) this.grantOwed();
    return true;
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.readable.push(null);
  }

  private grantOwed(): void {
    const n = this.owed;
    this.owed = 0;
    if (n > 0 && !this.ended && !this.ch.conn.closed)
      this.ch.conn.sendCredit(this.ch.channel, this.stream, this.window.consumed(n));
  }
}
