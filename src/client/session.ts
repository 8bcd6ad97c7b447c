import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { BangerError, ErrorCode, isBangerError } from '../errors/index.js';
import type { z } from 'zod';
import { SessionMethods, SessionNotifications, type OutputStream, type sessionEndSchema } from '../protocol/session.js';
import type { BangerClient } from './client.js';
import { StreamQueue } from './stream-queue.js';

/** Where reading a session's output starts: its first byte, its current end, or a byte offset. */
export type SessionFrom = 'start' | 'end' | number;

/** Bytes a session wrote to one stream, at `offset` of that stream. */
export interface SessionChunk {
  stream: OutputStream;
  offset: number;
  data: Buffer;
}

/** How a logs or attach stream ended: where each stream's reading stopped (resume from there), and the session. */
export type SessionEnd = z.infer<typeof sessionEndSchema>;

/** The largest piece of one `session.send` request (the protocol's limit). */
export const MAX_SEND_BYTES = 1024 * 1024;

/** A session's output as chunks, plus how the stream ended. */
export interface SessionOutput extends AsyncIterableIterator<SessionChunk> {
  /** Resolves when the daemon ends the stream (all output so far sent; with follow, the session ended). */
  readonly end: Promise<SessionEnd>;
}

function linkSignal(outer: AbortSignal | undefined): { ac: AbortController; unlink: () => void } {
  const ac = new AbortController();
  if (outer?.aborted) ac.abort();
  const onAbort = () => ac.abort();
  outer?.addEventListener('abort', onAbort, { once: true });
  return { ac, unlink: () => outer?.removeEventListener('abort', onAbort) };
}

function streamOutput(client: BangerClient, streamId: string, push: (c: SessionChunk) => void) {
  return client.onStream(SessionNotifications.output, streamId, (m) => m.streamId, (m) =>
    push({ stream: m.stream, offset: m.offset, data: Buffer.from(m.data, 'base64') }),
  );
}

/**
 * `session.logs`: output already kept from `from` on, and with `follow` new output until the session ends.
 * Breaking out of a `for await` stops the request; an aborted signal ends the iteration with Cancelled.
 */
export function sessionLogs(
  client: BangerClient,
  vm: string,
  session: string,
  opts: { from?: SessionFrom; stream?: OutputStream; follow?: boolean; signal?: AbortSignal } = {},
): SessionOutput {
  const streamId = randomUUID();
  const { ac, unlink } = linkSignal(opts.signal);
  const queue = new StreamQueue<SessionChunk>(() => ac.abort());
  const sub = streamOutput(client, streamId, (c) => queue.push(c));
  const end = client
    .call(
      SessionMethods.logs,
      { vm, session, streamId, from: opts.from, stream: opts.stream, follow: opts.follow },
      { signal: ac.signal },
    )
    .finally(() => {
      sub.dispose();
      unlink();
    });
  end.then(
    () => queue.finish(),
    (e: unknown) => queue.finish(e),
  );
  return Object.assign(queue, { end });
}

export interface SessionAttachment {
  /** Output chunks, when no onOutput callback was given. */
  readonly output: AsyncIterableIterator<SessionChunk>;
  /** Writes to the session's stdin. */
  write(data: Buffer | string): void;
  /** Closes the session's stdin. */
  end(): void;
  /** Tells a tty session the attached terminal's size (its process gets SIGWINCH); ignored without a tty. */
  resize(rows: number, cols: number): void;
  /** Lets go of the session; it keeps running. `done` then resolves with `detached: true`. */
  detach(): void;
  /** Resolves when the session ends (with how it ended) or on detach; rejects with a BangerError otherwise. */
  readonly done: Promise<{ detached: true } | { detached: false; end: SessionEnd }>;
}

/** `session.attach`: exclusive; output from `from` on, stdin forwarded; detaching keeps the session running. */
export function sessionAttach(
  client: BangerClient,
  vm: string,
  session: string,
  opts: { from?: SessionFrom; client?: string; onOutput?: (c: SessionChunk) => void; signal?: AbortSignal } = {},
): SessionAttachment {
  const streamId = randomUUID();
  const { ac, unlink } = linkSignal(opts.signal);
  let detached = false;
  const detach = () => {
    detached = true;
    ac.abort();
  };
  const queue = new StreamQueue<SessionChunk>(detach);
  const sub = streamOutput(client, streamId, opts.onOutput ?? ((c) => queue.push(c)));
  const done = client
    .call(SessionMethods.attach, { vm, session, streamId, from: opts.from, client: opts.client }, { signal: ac.signal })
    .then(
      // The daemon may answer a detach with the session as it is (still running) rather than a cancel.
      (end) => (detached && !opts.signal?.aborted ? { detached: true as const } : { detached: false as const, end }),
      (e: unknown) => {
        if (detached && !opts.signal?.aborted && isBangerError(e) && e.code === ErrorCode.Cancelled)
          return { detached: true as const };
        throw e;
      },
    )
    .finally(() => {
      sub.dispose();
      unlink();
    });
  done.then(
    () => queue.finish(),
    (e: unknown) => queue.finish(e),
  );
  return {
    output: queue,
    write: (data) => {
      const b = typeof data === 'string' ? Buffer.from(data) : data;
      if (b.length > 0) client.notify(SessionNotifications.stdin, { streamId, data: b.toString('base64') });
    },
    end: () => client.notify(SessionNotifications.stdin, { streamId, eof: true }),
    resize: (rows, cols) => client.notify(SessionNotifications.resize, { streamId, rows, cols }),
    detach,
    done,
  };
}

/**
 * `session.send`: writes bytes to a session's stdin, in requests of at most 1 MiB that share one sendId,
 * the last marked `final`; a Readable is streamed as it is read. Resolves with the bytes sent.
 */
export async function sessionSend(
  client: BangerClient,
  vm: string,
  session: string,
  data: string | Buffer | Readable,
  opts: { signal?: AbortSignal } = {},
): Promise<{ bytes: number }> {
  const sendId = randomUUID();
  let bytes = 0;
  const send = async (piece: Buffer, final: boolean) => {
    await client.call(SessionMethods.send, { vm, session, sendId, data: piece.toString('base64'), final }, opts);
    bytes += piece.length;
  };
  if (typeof data === 'string' || Buffer.isBuffer(data)) {
    const b = typeof data === 'string' ? Buffer.from(data) : data;
    let at = 0;
    do {
      const piece = b.subarray(at, at + MAX_SEND_BYTES);
      at += piece.length;
      await send(piece, at >= b.length);
    } while (at < b.length);
    return { bytes };
  }
  // Keep more than a full piece before sending one, so the last request (final) is never empty unless the input is.
  let pending: Buffer = Buffer.alloc(0);
  try {
    for await (const chunk of data) {
      if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
      pending = Buffer.concat([pending, typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer)]);
      while (pending.length > MAX_SEND_BYTES) {
        await send(pending.subarray(0, MAX_SEND_BYTES), false);
        pending = pending.subarray(MAX_SEND_BYTES);
      }
    }
  } catch (e) {
    if (isBangerError(e)) throw e;
    throw new BangerError(ErrorCode.InvalidArgument, `could not read the input to send: ${(e as Error).message}`);
  }
  await send(pending, true);
  return { bytes };
}
