import { Readable, Writable } from 'node:stream';
import type { BangerError } from '../../errors/index.js';
import type { FrameConnection } from '../../protocol/agent-frames.js';
import { InboundWindow, OutboundWindow } from '../../protocol/agent-flow.js';
import { AGENT_DATA_CHUNK, FrameKind, type StreamKind } from '../../protocol/agent.js';
import type { AgentSignal } from '../../protocol/agent-fields.js';
import type { AgentOutputStream, SessionEndEvent } from '../../protocol/agent-sessions.js';

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
  /** An attach or logs channel ended (after its last data frame). */
  sessionEnd?(event: SessionEndEvent): void;
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

/** A chunk of a session's output and its byte offset in that stream (where a later read can resume). */
export interface SessionOutputChunk {
  stream: AgentOutputStream;
  offset: number;
  data: Buffer;
}
/** Takes one chunk; the agent is granted more output once the returned promise (if any) settles. */
export type SessionOutputHandler = (chunk: SessionOutputChunk) => void | Promise<void>;

/** The end of an attach or logs stream: why, and where each stream's reading stopped (resume from there). */
export type AgentSessionEnd = Omit<SessionEndEvent, 'type' | 'channel'>;

/**
 * The daemon's end of a `sessionAttach` or `sessionLogs` channel. Chunks go to the handler one at a time, in
 * order, each with its offset; credit goes back only after the handler is done with it, so a slow consumer
 * slows the reading in the guest and nothing piles up in the daemon.
 */
export class SessionStreamChannel implements ClientChannel {
  private readonly windows = { stdout: new InboundWindow(), stderr: new InboundWindow() };
  private readonly offsets = { stdout: 0, stderr: 0 };
  private chain: Promise<void>;
  private begin!: () => void;
  private failed = false;
  readonly stdinWindow: OutboundWindow;
  private resolveEnd!: (e: AgentSessionEnd) => void;
  private rejectEnd!: (e: BangerError) => void;
  readonly ended = new Promise<AgentSessionEnd>((res, rej) => {
    this.resolveEnd = res;
    this.rejectEnd = rej;
  });

  constructor(
    readonly channel: number,
    readonly conn: FrameConnection,
    private readonly onOutput: SessionOutputHandler,
  ) {
    this.ended.catch(() => {});
    this.chain = new Promise<void>((res) => (this.begin = res));
    this.stdinWindow = new OutboundWindow((b) => conn.sendData(channel, FrameKind.Stdin, b));
  }

  /** The reply arrived: output counts from these offsets. Chunks that came with the reply wait until now. */
  started(stdoutOffset: number, stderrOffset: number): void {
    this.offsets.stdout = stdoutOffset;
    this.offsets.stderr = stderrOffset;
    this.begin();
  }

  data(kind: StreamKind, payload: Buffer): boolean {
    if (kind === FrameKind.Stdin || payload.length === 0) return true;
    const stream: AgentOutputStream = kind === FrameKind.Stdout ? 'stdout' : 'stderr';
    if (!this.windows[stream].accept(payload.length)) return false;
    this.chain = this.chain.then(async () => {
      const offset = this.offsets[stream];
      this.offsets[stream] += payload.length;
      try {
        if (!this.failed) await this.onOutput({ stream, offset, data: payload });
      } finally {
        if (!this.conn.closed) this.conn.sendCredit(this.channel, kind, this.windows[stream].consumed(payload.length));
      }
    });
    this.chain = this.chain.catch((e: unknown) => {
      // A handler that throws ends the stream for this consumer: the guest is told to stop sending.
      this.failed = true;
      this.detach();
      this.rejectEnd(e as BangerError);
    });
    return true;
  }

  credit(stream: StreamKind, bytes: number): void {
    if (stream === FrameKind.Stdin) this.stdinWindow.grant(bytes);
  }

  sessionEnd(e: SessionEndEvent): void {
    this.stdinWindow.abandon();
    const { type: _t, channel: _c, ...end } = e;
    void this.chain.then(() => this.resolveEnd(end));
  }

  detach(): void {
    if (!this.conn.closed) this.conn.sendControl({ type: 'sessionDetach', channel: this.channel });
  }

  fail(error: BangerError): void {
    this.failed = true;
    this.stdinWindow.abandon();
    this.begin();
    this.rejectEnd(error);
  }
}
