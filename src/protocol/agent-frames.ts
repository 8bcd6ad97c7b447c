import type { Duplex } from 'node:stream';
import {
  AGENT_MAX_FRAME,
  AGENT_MAX_SYNC_SKIP,
  AGENT_SYNC,
  FRAME_HEADER_BYTES,
  FrameKind,
  type StreamKind,
} from './agent.js';

/**
 * Framing of the agent protocol, shared by the daemon and the agent (see `agent.ts` for the wire format):
 * encoding frames, decoding a byte stream into frames, and one end of a framed connection. The credit
 * windows each stream's sender and receiver keep are in `agent-flow.ts`. Node built-ins only: the agent runs
 * on the guest's Node 18.
 */

export interface Frame {
  kind: number;
  channel: number;
  payload: Buffer;
}

/** Not a wire kind: what {@link FrameDecoder.push} returns where the peer sent AGENT_SYNC again (a restart). */
export const RESTART_KIND = -1;

/** The peer broke the framing; the connection cannot be trusted any more and is dropped. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

export function encodeFrame(kind: number, channel: number, payload: Uint8Array = EMPTY): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.writeUInt8(kind, 4);
  out.writeUInt32BE(channel, 5);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

export function encodeCredit(channel: number, stream: StreamKind, bytes: number): Buffer {
  const p = Buffer.allocUnsafe(5);
  p.writeUInt8(stream, 0);
  p.writeUInt32BE(bytes, 1);
  return encodeFrame(FrameKind.Credit, channel, p);
}

const EMPTY = Buffer.alloc(0);

/**
 * Turns a byte stream into frames. Incoming chunks are kept in a list and only the bytes of the frame being
 * completed are copied out, so a large frame arriving in small pieces costs linear time; the length in the
 * header is checked against `maxFrame` before any of the body is kept.
 */
export class FrameDecoder {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private header: { length: number; kind: number; channel: number } | null = null;
  private syncMatched: number;
  private scanned = 0;
  private stopped = false;

  /**
   * `sync`: skip bytes until {@link AGENT_SYNC} has been seen. `restartable`: AGENT_SYNC again at a frame
   * boundary is returned as a frame of kind {@link RESTART_KIND} (else it is a length over the cap, an error).
   */
  constructor(private readonly opts: { maxFrame?: number; sync?: boolean; restartable?: boolean } = {}) {
    this.syncMatched = opts.sync === false ? AGENT_SYNC.length : 0;
  }

  get synced(): boolean {
    return this.syncMatched === AGENT_SYNC.length;
  }

  /** Bytes held for a frame not yet complete. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /**
   * Feeds bytes; returns the frames they complete. Throws FrameError on a framing violation. A restart
   * (see the constructor) is the last frame returned: the decoder takes nothing more, and the bytes after
   * the restart are in {@link rest}.
   */
  push(chunk: Buffer): Frame[] {
    if (this.stopped) throw new Error('FrameDecoder: push after a restart');
    if (!this.synced) {
      let i = 0;
      // AGENT_SYNC's first byte does not occur again in it, so a mismatch restarts the match at this byte.
      for (; i < chunk.length && !this.synced; i++) {
        const b = chunk[i];
        if (b === AGENT_SYNC[this.syncMatched]) this.syncMatched++;
        else this.syncMatched = b === AGENT_SYNC[0] ? 1 : 0;
      }
      this.scanned += i;
      if (this.scanned - this.syncMatched > AGENT_MAX_SYNC_SKIP)
        throw new FrameError(`no protocol greeting within the first ${AGENT_MAX_SYNC_SKIP} bytes`);
      if (!this.synced) return [];
      chunk = chunk.subarray(i);
    }
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const frames: Frame[] = [];
    const max = this.opts.maxFrame ?? AGENT_MAX_FRAME;
    for (;;) {
      if (this.header === null) {
        if (this.opts.restartable && this.startsWithSync()) {
          if (this.buffered < AGENT_SYNC.length) break;
          if (this.peek(AGENT_SYNC.length).equals(AGENT_SYNC)) {
            // Whatever follows belongs to the new connection: left buffered for `rest()`, not decoded here.
            this.take(AGENT_SYNC.length);
            this.stopped = true;
            frames.push({ kind: RESTART_KIND, channel: 0, payload: EMPTY });
            return frames;
          }
        }
        if (this.buffered < FRAME_HEADER_BYTES) break;
        const h = this.take(FRAME_HEADER_BYTES);
        const length = h.readUInt32BE(0);
        if (length > max) throw new FrameError(`frame of ${length} bytes exceeds the ${max}-byte cap`);
        this.header = { length, kind: h.readUInt8(4), channel: h.readUInt32BE(5) };
      }
      if (this.buffered < this.header.length) break;
      frames.push({ kind: this.header.kind, channel: this.header.channel, payload: this.take(this.header.length) });
      this.header = null;
    }
    return frames;
  }

  /** The bytes buffered after a restart, for the decoder of the new connection. */
  rest(): Buffer[] {
    const out = this.chunks.splice(0);
    this.buffered = 0;
    return out;
  }

  /** Whether the buffered bytes (however few) are a prefix of AGENT_SYNC, or start with all of it. */
  private startsWithSync(): boolean {
    if (this.buffered === 0) return false;
    const n = Math.min(this.buffered, AGENT_SYNC.length);
    return this.peek(n).equals(AGENT_SYNC.subarray(0, n));
  }

  /** The first `n` buffered bytes (n <= buffered), left in place. */
  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (const c of this.chunks) {
      if (filled === n) break;
      const used = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, used);
      filled += used;
    }
    return out;
  }

  /** Removes `n` buffered bytes from the front; copies only when they span chunks. */
  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    this.buffered -= n;
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const used = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, used);
      filled += used;
      if (used === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(used);
    }
    return out;
  }
}

export interface FrameHandlers {
  /** A control message, parsed from JSON but not yet validated. */
  control(message: unknown): void;
  /** A data frame; an empty payload ends that stream. */
  data(channel: number, stream: StreamKind, payload: Buffer): void;
  credit(channel: number, stream: StreamKind, bytes: number): void;
  /** Once, when the connection ends; `error` says why when it was a violation or a transport failure. */
  closed(error?: Error): void;
  /**
   * The peer started over on this stream (AGENT_SYNC at a frame boundary). This connection has let go of the
   * stream without closing it (every later send through it is dropped, `closed` is not called); the handler
   * drops what the old connection had open and serves the stream with a new FrameConnection given
   * `{ continued: rest }`. Without this handler a restart is a framing violation.
   */
  restarted?(rest: Buffer[]): void;
}

/**
 * One end of the framed protocol over a Duplex. `greetFirst`: send {@link AGENT_SYNC} at once (the daemon);
 * otherwise after the peer's has been seen (the agent: it must not write into a port nobody has opened).
 */
export class FrameConnection {
  private readonly decoder: FrameDecoder;
  private greeted = false;
  private ended = false;

  constructor(
    private readonly stream: Duplex,
    private readonly handlers: FrameHandlers,
    opts: {
      greetFirst: boolean;
      /** The peer's AGENT_SYNC was read by an earlier connection on this stream (a restart); then these bytes. */
      continued?: Buffer[];
    },
  ) {
    this.decoder = new FrameDecoder({ sync: opts.continued === undefined, restartable: handlers.restarted !== undefined });
    if (opts.greetFirst || opts.continued) this.greet();
    stream.on('data', this.listeners.data);
    stream.on('end', this.listeners.end);
    stream.on('close', this.listeners.end);
    stream.on('error', this.listeners.error);
    for (const chunk of opts.continued ?? []) this.onBytes(chunk);
  }

  private readonly listeners = {
    data: (chunk: Buffer) => this.onBytes(chunk),
    end: () => this.close(),
    error: (e: Error) => this.close(e),
  };

  get closed(): boolean {
    return this.ended;
  }

  /** Bytes held for an incomplete incoming frame (bounded by the frame cap). */
  get bufferedBytes(): number {
    return this.decoder.bufferedBytes;
  }

  sendControl(message: object): void {
    this.write(encodeFrame(FrameKind.Control, 0, Buffer.from(JSON.stringify(message), 'utf8')));
  }

  sendData(channel: number, stream: StreamKind, payload: Buffer): void {
    this.write(encodeFrame(stream, channel, payload));
  }

  sendCredit(channel: number, stream: StreamKind, bytes: number): void {
    if (bytes > 0) this.write(encodeCredit(channel, stream, bytes));
  }

  /** Ends the connection; `error` is passed on to `closed`. */
  close(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.stream.destroy();
    this.handlers.closed(error);
  }

  /** A restart: let go of the stream, still open, and hand it with the bytes after the restart to the handler. */
  private handOver(): void {
    this.ended = true;
    this.stream.off('data', this.listeners.data);
    this.stream.off('end', this.listeners.end);
    this.stream.off('close', this.listeners.end);
    this.stream.off('error', this.listeners.error);
    this.handlers.restarted!(this.decoder.rest());
  }

  private greet(): void {
    this.greeted = true;
    this.stream.write(AGENT_SYNC);
  }

  private write(buf: Buffer): void {
    if (!this.ended) this.stream.write(buf);
  }

  private onBytes(chunk: Buffer): void {
    if (this.ended) return;
    try {
      const frames = this.decoder.push(chunk);
      if (!this.greeted && this.decoder.synced) this.greet();
      for (const f of frames) {
        if (this.ended) return;
        if (f.kind === RESTART_KIND) return this.handOver();
        this.dispatch(f);
      }
    } catch (e) {
      this.close(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private dispatch(f: Frame): void {
    switch (f.kind) {
      case FrameKind.Control: {
        let message: unknown;
        try {
          message = JSON.parse(f.payload.toString('utf8'));
        } catch {
          throw new FrameError('control frame is not JSON');
        }
        this.handlers.control(message);
        return;
      }
      case FrameKind.Stdin:
      case FrameKind.Stdout:
      case FrameKind.Stderr:
        this.handlers.data(f.channel, f.kind, f.payload);
        return;
      case FrameKind.Credit: {
        if (f.payload.length !== 5) throw new FrameError('credit frame of the wrong size');
        const stream = f.payload.readUInt8(0);
        if (stream !== FrameKind.Stdin && stream !== FrameKind.Stdout && stream !== FrameKind.Stderr)
          throw new FrameError(`credit for unknown stream ${stream}`);
        this.handlers.credit(f.channel, stream, f.payload.readUInt32BE(1));
        return;
      }
      default:
        throw new FrameError(`unknown frame kind ${f.kind}`);
    }
  }
}
