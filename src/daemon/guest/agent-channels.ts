import { BangerError, ErrorCode } from '../../errors/index.js';
import { FrameError, type FrameConnection } from '../../protocol/agent-frames.js';
import { OutboundWindow } from '../../protocol/agent-flow.js';
import { AGENT_DATA_CHUNK, FrameKind, type AgentRequestType, type StreamKind } from '../../protocol/agent.js';
import type { SessionStreamResult } from '../../protocol/agent-sessions.js';
import {
  SessionStreamChannel,
  type AgentSessionEnd,
  type ClientChannel,
  type SessionOutputHandler,
} from './agent-process.js';

/**
 * The channels of one guest agent connection (its client is agent-client.ts): the table of open channel
 * numbers that data, credit, exit and sessionEnd frames are routed to, and the channels the client opens
 * besides exec (agent-process.ts): uploads, whose stdin stream carries bytes to the agent within its credit
 * (writeFile, sessionSend), and session streams (sessionLogs, sessionAttach). A channel leaves the table
 * with its last frame, with its request's failure, or when the connection ends.
 */

/** Where reading starts: the first byte, the current end, or a byte offset. */
export type SessionReadFrom = 'start' | 'end' | number;

export interface AgentSessionStreamOptions {
  name: string;
  from?: SessionReadFrom;
  onOutput: SessionOutputHandler;
  /** Aborting detaches: the stream ends (reason `detached`) and the session keeps running. */
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** An open attach or logs stream. */
export interface AgentSessionStream {
  /** Where reading started, and the session as it was then. */
  start: SessionStreamResult;
  /** Resolves after the last chunk was handled; rejects with Unavailable if the connection is lost. */
  ended: Promise<AgentSessionEnd>;
  /** Ends the stream early; `ended` then resolves with reason `detached`. */
  detach(): void;
}

/** An exclusive attach: a stream of both outputs plus the session's stdin and terminal size. */
export interface AgentSessionAttachment extends AgentSessionStream {
  /** One whole write to the session's stdin; resolves once the agent has taken it (within credit). */
  write(data: Buffer): Promise<void>;
  /** Closes the session's stdin (after what was written). */
  closeStdin(): void;
  resize(cols: number, rows: number): void;
}

/** Sends a request on the connection and waits for its reply (AgentClient's request). */
export type AgentRequest = (
  type: AgentRequestType,
  body: object,
  opts: { signal?: AbortSignal; timeoutMs?: number },
  deferTimeout?: (arm: () => void) => void,
) => Promise<unknown>;

export class AgentChannels {
  private readonly open = new Map<number, ClientChannel>();
  private nextChannel = 1;

  constructor(
    private readonly conn: FrameConnection,
    private readonly request: AgentRequest,
  ) {}

  /** Routes a data frame to its channel; the agent never sends stdin, nor more than the credit granted. */
  data(channel: number, stream: StreamKind, payload: Buffer): void {
    if (stream === FrameKind.Stdin) throw new FrameError('the agent sent stdin data');
    // Data for a channel given up on (its start timed out) is dropped; it is never buffered.
    const ch = this.open.get(channel);
    if (ch && !ch.data(stream, payload)) throw new FrameError(`channel ${channel} overran its credit`);
  }

  credit(channel: number, stream: StreamKind, bytes: number): void {
    this.open.get(channel)?.credit(stream, bytes);
  }

  /** The channel's last message (exit, sessionEnd) came: it leaves the table; returns it if it was open. */
  end(channel: number): ClientChannel | undefined {
    const ch = this.open.get(channel);
    this.open.delete(channel);
    return ch;
  }

  set(channel: number, ch: ClientChannel): void {
    this.open.set(channel, ch);
  }

  delete(channel: number): void {
    this.open.delete(channel);
  }

  /** The connection ended: every open channel fails with `error` and the table is emptied. */
  failAll(error: BangerError): void {
    for (const ch of this.open.values()) ch.fail(error);
    this.open.clear();
  }

  /** An exclusive attach (AgentClient.sessionAttach): a stream plus the session's stdin and terminal size. */
  async attachSession(o: AgentSessionStreamOptions & { client?: string }): Promise<AgentSessionAttachment> {
    const { stream, ch } = await this.openSessionStreamChannel('sessionAttach', { client: o.client }, o);
    const win = ch.stdinWindow;
    return {
      ...stream,
      write: (data) => new Promise<void>((res) => (win.write(data, res) ? res() : undefined)),
      closeStdin: () => win.end(),
      resize: (cols, rows) => {
        if (!this.conn.closed) this.conn.sendControl({ type: 'resize', channel: ch.channel, cols, rows });
      },
    };
  }

  /** One whole send to a session's stdin (AgentClient.sessionSend), streamed within credit. */
  async sendToSession(
    name: string,
    data: Buffer | AsyncIterable<Buffer | Uint8Array>,
    opts: { closeStdin?: boolean; signal?: AbortSignal } = {},
  ): Promise<{ bytes: number }> {
    const up = this.upload();
    const onAbort = () => {
      if (!this.conn.closed) this.conn.sendControl({ type: 'sessionDetach', channel: up.channel });
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const reply = up.settleWith(
      this.request('sessionSend', { channel: up.channel, name, closeStdin: opts.closeStdin }, opts, () => {}).finally(
        () => opts.signal?.removeEventListener('abort', onAbort),
      ),
    );
    await up.pump(data);
    return (await reply) as { bytes: number };
  }

  /** Opens a logs or attach stream of a session (AgentClient.sessionLogs, sessionAttach). */
  async openSessionStream(
    type: 'sessionAttach' | 'sessionLogs',
    extra: object,
    o: AgentSessionStreamOptions,
  ): Promise<AgentSessionStream> {
    return (await this.openSessionStreamChannel(type, extra, o)).stream;
  }

  private async openSessionStreamChannel(
    type: 'sessionAttach' | 'sessionLogs',
    extra: object,
    o: AgentSessionStreamOptions,
  ): Promise<{ stream: AgentSessionStream; ch: SessionStreamChannel }> {
    const channel = this.alloc();
    const ch = new SessionStreamChannel(channel, this.conn, o.onOutput);
    this.open.set(channel, ch);
    let start: SessionStreamResult;
    try {
      start = (await this.request(
        type,
        { channel, name: o.name, from: o.from, ...extra },
        { timeoutMs: o.timeoutMs, signal: o.signal },
      )) as SessionStreamResult;
    } catch (e) {
      // Cancelled while the agent may still open the stream: tell it to end it at once.
      if ((e as BangerError).code === ErrorCode.Cancelled) ch.detach();
      this.open.delete(channel);
      ch.fail(e as BangerError);
      throw e;
    }
    ch.started(start.stdoutOffset, start.stderrOffset);
    const onAbort = () => ch.detach();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    void ch.ended.finally(() => o.signal?.removeEventListener('abort', onAbort)).catch(() => {});
    return { stream: { start, ended: ch.ended, detach: () => ch.detach() }, ch };
  }

  /**
   * A channel whose stdin stream carries bytes to the agent within its credit (writeFile, sessionSend).
   * `settleWith` ties the channel's life to the request's reply; `pump` streams the data and ends the stream,
   * stopping early (and returning true) once the reply has come.
   */
  upload() {
    const channel = this.alloc();
    const window = new OutboundWindow((b) => this.conn.sendData(channel, FrameKind.Stdin, b));
    let settled = false;
    this.open.set(channel, {
      data: () => true,
      credit: (stream, bytes) => stream === FrameKind.Stdin && window.grant(bytes),
      fail: () => window.abandon(),
    });
    return {
      channel,
      settleWith: <T>(reply: Promise<T>): Promise<T> => {
        const done = reply.finally(() => {
          settled = true;
          window.abandon();
          this.open.delete(channel);
        });
        done.catch(() => {}); // observed by the caller; a failure while content is still being sent ends the pump
        return done;
      },
      pump: async (data: Buffer | AsyncIterable<Buffer | Uint8Array | string>): Promise<boolean> => {
        const send = (b: Buffer) => new Promise<void>((res) => (window.write(b, res) ? res() : undefined));
        for await (const chunk of Buffer.isBuffer(data) ? chunked(data) : data) {
          if (settled) break;
          await send(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array));
        }
        window.end();
        return settled;
      },
    };
  }

  /** The next channel number (after 2^32 - 1 it starts again at 1). */
  alloc(): number {
    const c = this.nextChannel;
    this.nextChannel = c >= 0xffffffff ? 1 : c + 1;
    return c;
  }
}

function* chunked(buf: Buffer): Generator<Buffer> {
  for (let i = 0; i < buf.length; i += AGENT_DATA_CHUNK) yield buf.subarray(i, i + AGENT_DATA_CHUNK);
}
