import type net from 'node:net';
import { AbstractMessageReader, type DataCallback, type Disposable, type Message, type MessageReader } from 'vscode-jsonrpc/node.js';

/**
 * Reads `Content-Length`-framed JSON-RPC messages from a client socket with bounded memory.
 *
 * vscode-jsonrpc's own reader buffers a message of any announced length, and a body that is not JSON only
 * raises an error event that nobody answers. This one:
 * - refuses a message whose Content-Length is over `maxMessageBytes` as soon as the header is read, without
 *   reading the body, by closing that connection;
 * - closes the connection on a header it cannot frame (no Content-Length, garbage, a header section over
 *   `MAX_HEADER_BYTES`), since nothing after it can be trusted to start a message;
 * - answers a well-framed body that is not JSON with a JSON-RPC parse error (-32700), and one that is JSON but
 *   not a JSON-RPC 2.0 message object with invalid request (-32600), and keeps the connection.
 */

/** The largest request the daemon accepts. Requests are small (file contents travel as exec/stdin chunks). */
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
/** The largest header section (all header lines) the daemon accepts. */
export const MAX_HEADER_BYTES = 8 * 1024;

export const PARSE_ERROR = -32700;
export const INVALID_REQUEST = -32600;

export interface CappedReaderOptions {
  maxMessageBytes?: number;
  /** A framed body that is not a JSON-RPC message; the caller replies with `code` (id null: none could be read). */
  onBadMessage: (code: typeof PARSE_ERROR | typeof INVALID_REQUEST, message: string) => void;
  /** The stream cannot be framed any more; the socket is destroyed right after this. */
  onViolation?: (reason: string) => void;
}

const HEADER_END = Buffer.from('\r\n\r\n', 'ascii');

/** The body length a header section announces, or why it is unusable. */
export function parseHeaderSection(text: string): { length: number } | { error: string } {
  let length: number | undefined;
  for (const line of text.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) return { error: 'malformed header line' };
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-length') {
      if (!/^\d{1,15}$/.test(value)) return { error: 'Content-Length is not a number' };
      length = Number(value);
    }
  }
  if (length === undefined) return { error: 'no Content-Length header' };
  return { length };
}

export class CappedSocketReader extends AbstractMessageReader implements MessageReader {
  private readonly maxMessageBytes: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Body length of the message being read; -1 while reading a header. */
  private bodyLength = -1;
  private dead = false;
  private callback: DataCallback | undefined;
  private unlisten: (() => void) | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: CappedReaderOptions,
  ) {
    super();
    this.maxMessageBytes = opts.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  }

  listen(callback: DataCallback): Disposable {
    this.callback = callback;
    const onData = (d: Buffer) => this.onData(d);
    const onError = (e: Error) => this.fireError(e);
    const onClose = () => this.fireClose();
    this.socket.on('data', onData);
    this.socket.on('error', onError);
    this.socket.on('close', onClose);
    this.unlisten = () => {
      this.socket.off('data', onData);
      this.socket.off('error', onError);
      this.socket.off('close', onClose);
    };
    return { dispose: () => this.unlisten?.() };
  }

  override dispose(): void {
    super.dispose();
    this.unlisten?.();
    this.chunks = [];
  }

  private onData(data: Buffer): void {
    if (this.dead) return;
    this.chunks.push(data);
    this.buffered += data.length;
    for (;;) {
      if (this.bodyLength < 0) {
        const head = this.joined();
        const end = head.indexOf(HEADER_END);
        if (end < 0) {
          if (head.length > MAX_HEADER_BYTES) return this.violate('header section too long');
          return;
        }
        if (end > MAX_HEADER_BYTES) return this.violate('header section too long');
        const h = parseHeaderSection(head.subarray(0, end).toString('latin1'));
        if ('error' in h) return this.violate(h.error);
        if (h.length > this.maxMessageBytes)
          return this.violate(`message of ${h.length} bytes is over the limit of ${this.maxMessageBytes}`);
        this.bodyLength = h.length;
        this.keep(head.subarray(end + HEADER_END.length));
      }
      if (this.buffered < this.bodyLength) return;
      const all = this.joined();
      const body = all.subarray(0, this.bodyLength);
      this.bodyLength = -1;
      // Copy what follows so the finished body's buffer can be freed.
      this.keep(Buffer.from(all.subarray(body.length)));
      this.deliver(body);
      if (this.dead || this.buffered === 0) return;
    }
  }

  private deliver(body: Buffer): void {
    let msg: unknown;
    try {
      msg = JSON.parse(body.toString('utf8'));
    } catch (e) {
      this.opts.onBadMessage(PARSE_ERROR, `Parse error: ${(e as Error).message.slice(0, 200)}`);
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg) || (msg as { jsonrpc?: unknown }).jsonrpc !== '2.0') {
      this.opts.onBadMessage(INVALID_REQUEST, 'Invalid Request: expected one JSON-RPC 2.0 message object');
      return;
    }
    try {
      this.callback?.(msg as Message);
    } catch (e) {
      this.fireError(e);
    }
  }

  private joined(): Buffer {
    if (this.chunks.length !== 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0]!;
  }

  private keep(rest: Buffer): void {
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
  }

  private violate(reason: string): void {
    this.dead = true;
    this.chunks = [];
    this.buffered = 0;
    this.opts.onViolation?.(reason);
    this.socket.destroy();
  }
}
