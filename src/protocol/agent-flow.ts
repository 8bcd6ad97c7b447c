import { AGENT_DATA_CHUNK, AGENT_STREAM_WINDOW } from './agent.js';

/**
 * Credit flow control of the agent protocol, shared by the daemon and the agent: every data stream of a
 * channel has a window of {@link AGENT_STREAM_WINDOW} bytes the sender may have in flight, and the receiver
 * grants more (credit frames, `agent-frames.ts` encodeCredit) as its consumer takes bytes, so neither side
 * buffers a flood. These classes keep the counts; the frames themselves go through a FrameConnection. Node
 * built-ins only: the agent runs on the guest's Node 18.
 */

/** What an empty data frame carries: the end of its stream. */
const END_OF_STREAM = Buffer.alloc(0);

/**
 * The sending half of one stream: sends while the peer has granted credit and holds back the rest. A writer
 * is meant to wait for its callback before handing more, so at most one chunk waits; one that does not (a
 * source that emits after being paused) still has its bytes queued and sent in order, never dropped.
 */
export class OutboundWindow {
  private credit = AGENT_STREAM_WINDOW;
  private readonly queue: Buffer[] = [];
  private ending = false;
  private done = false;
  private drainCbs: (() => void)[] = [];

  constructor(private readonly emit: (piece: Buffer) => void) {}

  /** Sends what credit allows; false when part of `buf` waits for credit (then `cb` runs once it is sent). */
  write(buf: Buffer, cb?: () => void): boolean {
    if (this.done || this.ending) return true;
    if (buf.length > 0) this.queue.push(buf);
    this.flush();
    if (this.queue.length === 0) return true;
    if (cb) this.drainCbs.push(cb);
    return false;
  }

  /** Sends the end of the stream (an empty data frame) after whatever is pending. */
  end(): void {
    if (this.done) return;
    this.ending = true;
    this.flush();
  }

  grant(bytes: number): void {
    this.credit += bytes;
    this.flush();
  }

  /** True once the end of the stream has been sent. */
  get finished(): boolean {
    return this.done;
  }

  /** Stops sending (the channel or connection is gone); a waiting writer is released. */
  abandon(): void {
    this.done = true;
    this.queue.length = 0;
    this.release();
  }

  onFinished: (() => void) | null = null;

  private flush(): void {
    while (this.queue.length > 0 && this.credit > 0 && !this.done) {
      const head = this.queue[0]!;
      const n = Math.min(this.credit, AGENT_DATA_CHUNK, head.length);
      this.emit(head.subarray(0, n));
      this.credit -= n;
      if (n === head.length) this.queue.shift();
      else this.queue[0] = head.subarray(n);
    }
    if (this.queue.length > 0 || this.done) return;
    this.release();
    if (this.ending) {
      this.done = true;
      this.emit(END_OF_STREAM);
      this.onFinished?.();
    }
  }

  private release(): void {
    const cbs = this.drainCbs;
    this.drainCbs = [];
    for (const cb of cbs) cb();
  }
}

/**
 * The receiving half of one stream: refuses bytes beyond the credit granted, and grants credit back as the
 * consumer takes bytes, in batches of a quarter window so credit frames stay few.
 */
export class InboundWindow {
  private allowed = AGENT_STREAM_WINDOW;
  private consumedNotGranted = 0;

  /** False when the sender overran its credit: a protocol violation. */
  accept(bytes: number): boolean {
    if (bytes > this.allowed) return false;
    this.allowed -= bytes;
    return true;
  }

  /** Records consumed bytes; returns the credit to grant now (0: keep batching). */
  consumed(bytes: number): number {
    this.consumedNotGranted += bytes;
    if (this.consumedNotGranted < AGENT_STREAM_WINDOW / 4) return 0;
    const grant = this.consumedNotGranted;
    this.consumedNotGranted = 0;
    this.allowed += grant;
    return grant;
  }
}
