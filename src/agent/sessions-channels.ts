import { open } from 'node:fs/promises';
import { readSync } from 'node:fs';
import { InboundWindow, OutboundWindow } from '../protocol/agent-flow.js';
import { AGENT_DATA_CHUNK, FrameKind, type StreamKind } from '../protocol/agent.js';
import type {
  AgentOutputStream,
  SessionAttachRequest,
  SessionEndEvent,
  SessionLogsRequest,
  SessionSendRequest,
  SessionStreamResult,
} from '../protocol/agent-sessions.js';
import { AgentFailure } from './channel.js';
import type { InputConnection, Session } from './sessions-session.js';

/**
 * The channels of `sessionAttach`, `sessionLogs` and `sessionSend`. Output is read from the session's files
 * (so any offset can be read again later) and sent within the daemon's credit: a slow reader slows only its
 * own reading, never the session's process, which writes to disk through its supervisor.
 */

/** What a session channel may send back, bound to its channel id. */
export interface SessionChannelIo {
  sendData(stream: StreamKind, payload: Buffer): void;
  sendCredit(stream: StreamKind, bytes: number): void;
  /** Sends the `sessionEnd` event (channel filled in) and forgets the channel. */
  end(event: Omit<SessionEndEvent, 'type' | 'channel'>): void;
}

const KIND: Record<AgentOutputStream, StreamKind> = { stdout: FrameKind.Stdout, stderr: FrameKind.Stderr };

/** Where `from` puts the start of `stream`; an offset past what is written is refused. */
async function startOffset(session: Session, stream: AgentOutputStream, from: 'start' | 'end' | number) {
  const info = await session.info();
  const size = stream === 'stdout' ? info.stdoutBytes : info.stderrBytes;
  if (from === 'start') return 0;
  if (from === 'end') return size;
  if (from > size)
    throw new AgentFailure(
      'InvalidArgument',
      `offset ${from} is past the end of ${stream} of session ${session.name} (${size} bytes so far)`,
    );
  return from;
}

/** Sends one stream's file from `offset` to its end, then (`follow`) what is appended until the session ends. */
class StreamReader {
  private stopped = false;
  private wake: () => void = () => {};
  private readonly window: OutboundWindow;

  constructor(
    private readonly session: Session,
    private readonly stream: AgentOutputStream,
    public offset: number,
    io: SessionChannelIo,
  ) {
    this.window = new OutboundWindow((b) => io.sendData(KIND[stream], b));
  }

  credit(bytes: number): void {
    this.window.grant(bytes);
  }

  /** Stops after the chunk in flight is sent, so `offset` stays exact. */
  stop(): void {
    this.stopped = true;
    this.wake();
  }

  /** The connection is gone: nothing more is sent. */
  abandon(): void {
    this.window.abandon();
    this.stop();
  }

  /** Resolves with the offset where reading stopped. */
  async run(follow: boolean): Promise<number> {
    const fh = await open(this.session.file(`${this.stream}.log`), 'r');
    try {
      while (!this.stopped) {
        const wasRunning = this.session.running;
        const change = this.session.changed();
        const buf = Buffer.allocUnsafe(AGENT_DATA_CHUNK);
        // Synchronous: the log is a local file, mostly just written by the supervisor (in the page cache; an old
        // one read from offset 0 holds the agent for one chunk's disk read at a time), and a read through the
        // thread pool cost a reply ~1.5 ms twice over under emulation. Alternating the two in one VM: send ->
        // reply 19.6-25 ms against 24-48, 64 MiB streamed 5.1-5.4 s against 6.4-7.3.
        const bytesRead = readSync(fh.fd, buf, 0, buf.length, this.offset);
        if (bytesRead > 0) {
          await new Promise<void>((res) => (this.window.write(buf.subarray(0, bytesRead), res) ? res() : undefined));
          this.offset += bytesRead;
          continue;
        }
        // The end is recorded only after all output is on disk: a read after that saw everything.
        if (!follow || !wasRunning) break;
        await new Promise<void>((res) => {
          this.wake = res;
          void change.next().then(res);
        });
      }
    } finally {
      await fh.close();
    }
    return this.offset;
  }
}

/** An exclusive attach: both streams followed, stdin forwarded (each frame one whole write). */
export class SessionAttachChannel {
  private readonly readers: Record<AgentOutputStream, StreamReader>;
  private readonly stdinWindow = new InboundWindow();
  private readonly input: (Buffer | 'eof')[] = [];
  private pumping = false;
  private detached = false;
  private disposed = false;

  constructor(
    private readonly session: Session,
    private readonly io: SessionChannelIo,
  ) {
    this.readers = {
      stdout: new StreamReader(session, 'stdout', 0, io),
      stderr: new StreamReader(session, 'stderr', 0, io),
    };
  }

  /** Takes the session (or fails with Conflict naming the holder) and places both readers. */
  async open(req: SessionAttachRequest): Promise<SessionStreamResult> {
    const s = this.session;
    if (s.attachedBy !== null)
      throw new AgentFailure(
        'Conflict',
        `session ${s.name} is attached by ${s.attachedBy.client}; detach there first (send works while attached)`,
      );
    s.attachedBy = { holder: this, client: req.client ?? 'another client' };
    try {
      const from = req.from ?? 'end';
      this.readers.stdout.offset = await startOffset(s, 'stdout', from);
      this.readers.stderr.offset = await startOffset(s, 'stderr', typeof from === 'number' ? 'end' : from);
      return {
        stdoutOffset: this.readers.stdout.offset,
        stderrOffset: this.readers.stderr.offset,
        session: await s.info(),
      };
    } catch (e) {
      this.release();
      throw e;
    }
  }

  /** Streams until the session has ended and everything is sent, or until detached. */
  async run(): Promise<void> {
    try {
      const [stdoutOffset, stderrOffset] = await Promise.all([
        this.readers.stdout.run(true),
        this.readers.stderr.run(true),
      ]);
      this.release();
      if (this.disposed) return;
      const session = await this.session.info();
      this.io.end({ reason: this.detached ? 'detached' : 'exited', stdoutOffset, stderrOffset, session });
    } catch {
      this.release();
      if (!this.disposed)
        this.io.end({ reason: 'exited', stdoutOffset: 0, stderrOffset: 0, session: await this.session.info() });
    }
  }

  stdin(payload: Buffer): boolean {
    if (payload.length > 0 && !this.stdinWindow.accept(payload.length)) return false;
    this.input.push(payload.length === 0 ? 'eof' : payload);
    void this.pump();
    return true;
  }

  credit(stream: StreamKind, bytes: number): void {
    if (stream === FrameKind.Stdout) this.readers.stdout.credit(bytes);
    else if (stream === FrameKind.Stderr) this.readers.stderr.credit(bytes);
  }

  resize(cols: number, rows: number): void {
    if (this.session.meta.tty && this.session.running) void this.session.command('R', `${rows} ${cols}\n`);
  }

  detach(): void {
    this.detached = true;
    this.readers.stdout.stop();
    this.readers.stderr.stop();
  }

  dispose(): void {
    this.disposed = true;
    this.readers.stdout.abandon();
    this.readers.stderr.abandon();
    this.release();
  }

  private release(): void {
    if (this.session.attachedBy?.holder === this) this.session.attachedBy = null;
  }

  /** Delivers queued input under the session's send lock; credit goes back once a frame is in the pipe. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.input.length > 0) {
        await this.session
          .withStdin(async () => {
            const conn = this.session.openInput();
            let eof = false;
            while (this.input.length > 0 && !eof) {
              const item = this.input.shift()!;
              if (item === 'eof') eof = true;
              else await this.write(conn, item);
            }
            await conn.finish();
            if (eof) await this.session.command('E');
          })
          .catch(() => {
            // The session has ended: its input is dropped, but credited so the daemon is not left waiting.
            for (const item of this.input.splice(0)) if (item !== 'eof') this.credit_(item.length);
          });
      }
    } finally {
      this.pumping = false;
    }
  }

  private write(conn: InputConnection, b: Buffer): Promise<void> {
    return new Promise((res) =>
      conn.write(b, () => {
        this.credit_(b.length);
        res();
      }),
    );
  }

  private credit_(n: number): void {
    if (!this.disposed) this.io.sendCredit(FrameKind.Stdin, this.stdinWindow.consumed(n));
  }
}

/** One stream of a session from an offset, to its current end or (`follow`) until the session ends. */
export class SessionLogsChannel {
  private reader: StreamReader | null = null;
  private detached = false;
  private disposed = false;

  constructor(
    private readonly session: Session,
    private readonly io: SessionChannelIo,
  ) {}

  async open(req: SessionLogsRequest): Promise<SessionStreamResult> {
    const stream = req.stream ?? 'stdout';
    const offset = await startOffset(this.session, stream, req.from ?? 'start');
    this.reader = new StreamReader(this.session, stream, offset, this.io);
    return {
      stdoutOffset: stream === 'stdout' ? offset : 0,
      stderrOffset: stream === 'stderr' ? offset : 0,
      session: await this.session.info(),
    };
  }

  async run(req: SessionLogsRequest): Promise<void> {
    const stream = req.stream ?? 'stdout';
    let offset = this.reader!.offset;
    try {
      offset = await this.reader!.run(req.follow === true);
    } catch {
      // the file went away (rm): what was sent stands
    }
    if (this.disposed) return;
    const session = await this.session.info();
    const reason = this.detached ? 'detached' : session.state === 'running' ? 'caughtUp' : 'exited';
    this.io.end({
      reason,
      stdoutOffset: stream === 'stdout' ? offset : 0,
      stderrOffset: stream === 'stderr' ? offset : 0,
      session,
    });
  }

  stdin(): boolean {
    return true;
  }

  credit(_stream: StreamKind, bytes: number): void {
    this.reader?.credit(bytes);
  }

  detach(): void {
    this.detached = true;
    this.reader?.stop();
  }

  dispose(): void {
    this.disposed = true;
    this.reader?.abandon();
  }
}

/**
 * One send: its bytes reach the session's stdin under the session's send lock, so a send is never split by
 * another. Frames that arrive while an earlier send holds the lock wait here (at most one stream window).
 */
export class SessionSendChannel {
  private readonly window = new InboundWindow();
  private readonly queued: Buffer[] = [];
  private conn: InputConnection | null = null;
  private bytes = 0;
  private ended = false;
  private abandoned = false;
  private endWait = (): void => {};

  constructor(
    private readonly session: Session,
    private readonly req: SessionSendRequest,
    private readonly io: Pick<SessionChannelIo, 'sendCredit'>,
  ) {}

  /** Resolves with the bytes delivered once the send is complete; rejects with an AgentFailure. */
  async run(): Promise<{ bytes: number }> {
    const s = this.session;
    if (!s.running) throw s.exited();
    const ok = await s.withStdin(async () => {
      if (this.abandoned) return false;
      const conn = s.openInput();
      this.conn = conn;
      for (const b of this.queued.splice(0)) this.write(conn, b);
      if (!this.ended && !this.abandoned) await new Promise<void>((res) => (this.endWait = res));
      const delivered = await conn.finish();
      if (delivered && this.req.closeStdin === true && !this.abandoned) await s.command('E');
      return delivered;
    });
    if (this.abandoned)
      throw new AgentFailure('FailedPrecondition', `the send was abandoned after ${this.bytes} bytes`);
    if (!ok) throw s.notReading();
    return { bytes: this.bytes };
  }

  stdin(payload: Buffer): boolean {
    if (this.ended || this.abandoned) return true;
    if (payload.length === 0) {
      this.ended = true;
      this.endWait();
      return true;
    }
    if (!this.window.accept(payload.length)) return false;
    if (this.conn) this.write(this.conn, payload);
    else this.queued.push(payload);
    return true;
  }

  detach(): void {
    this.abandoned = true;
    this.queued.length = 0;
    this.endWait();
  }

  dispose(): void {
    this.detach();
  }

  private write(conn: InputConnection, b: Buffer): void {
    conn.write(b, () => {
      this.bytes += b.length;
      if (!this.abandoned) this.io.sendCredit(FrameKind.Stdin, this.window.consumed(b.length));
    });
  }
}
