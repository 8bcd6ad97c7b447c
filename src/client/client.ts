import net from 'node:net';
import { randomUUID } from 'node:crypto';
import {
  CancellationTokenSource,
  createMessageConnection,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  type MessageConnection,
  type NotificationType,
  type RequestType,
} from 'vscode-jsonrpc/node.js';
import { BangerError, ErrorCode } from '../errors/index.js';
import { fromWire } from '../errors/wire.js';
import { progressType, type ProgressEvent } from '../protocol/common.js';

export interface CallOptions {
  onProgress?: (ev: ProgressEvent) => void;
  /** Aborting sends a cancellation to the daemon, which stops the work; the call rejects with Cancelled. */
  signal?: AbortSignal;
}

export interface Disposable {
  dispose(): void;
}

/** A typed JSON-RPC client of bangerd over its unix socket. */
export class BangerClient {
  /** Per notification method: the listener of each stream id (execId, streamId) on this connection. */
  private readonly routes = new Map<string, Map<string, (msg: never) => void>>();

  /** Rejects (with Unavailable) when the connection closes: vscode-jsonrpc leaves pending requests unsettled then. */
  private readonly closed: Promise<never>;

  private constructor(
    readonly connection: MessageConnection,
    private readonly socket: net.Socket,
  ) {
    this.closed = new Promise<never>((_, reject) =>
      socket.once('close', () =>
        reject(new BangerError(ErrorCode.Unavailable, 'bangerd closed the connection', { hint: 'see `banger daemon logs`' })),
      ),
    );
    this.closed.catch(() => undefined);
  }

  /** Connects to a running daemon; rejects with the socket error (ENOENT, ECONNREFUSED...) when none answers. */
  static connect(socketPath: string): Promise<BangerClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(socketPath);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        const connection = createMessageConnection(new SocketMessageReader(socket), new SocketMessageWriter(socket));
        connection.listen();
        resolve(new BangerClient(connection, socket));
      });
    });
  }

  async call<P, R>(type: RequestType<P, R, unknown>, params: P, opts: CallOptions = {}): Promise<R> {
    // An aborted signal never fires 'abort' again: refuse here, before anything reaches the daemon.
    if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
    const cts = new CancellationTokenSource();
    const onAbort = () => cts.cancel();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let progressSub: { dispose(): void } | undefined;
    let sent = params;
    if (opts.onProgress) {
      const token = randomUUID();
      progressSub = this.connection.onProgress(progressType, token, opts.onProgress);
      sent = { ...(params as object), progressToken: token } as P;
    }
    try {
      return await Promise.race([this.connection.sendRequest(type, sent, cts.token), this.closed]);
    } catch (e) {
      if (e instanceof BangerError && !opts.signal?.aborted) throw e;
      if (e instanceof ResponseError) throw fromWire({ code: e.code, message: e.message, data: e.data });
      if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
      throw new BangerError(ErrorCode.Unavailable, `lost the connection to bangerd: ${(e as Error).message}`, {
        hint: 'see `banger daemon logs`',
      });
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      progressSub?.dispose();
      cts.dispose();
    }
  }

  /**
   * Delivers the notifications of `type` that carry stream id `id` (as `idOf` reads it) to `listener`.
   * vscode-jsonrpc keeps a single handler per notification method, so every concurrent exec or session
   * stream on this connection goes through one router instead of replacing each other's handler.
   */
  onStream<T>(type: NotificationType<T>, id: string, idOf: (msg: T) => string, listener: (msg: T) => void): Disposable {
    let byId = this.routes.get(type.method);
    if (!byId) {
      const table = new Map<string, (msg: never) => void>();
      byId = table;
      this.routes.set(type.method, table);
      this.connection.onNotification(type, (msg: T) => (table.get(idOf(msg)) as ((m: T) => void) | undefined)?.(msg));
    }
    byId.set(id, listener as (msg: never) => void);
    const table = byId;
    return { dispose: () => void (table.get(id) === listener && table.delete(id)) };
  }

  /** Sends a notification; a connection already closed drops it (the pending request reports the loss). */
  notify<T>(type: NotificationType<T>, params: T): void {
    this.connection.sendNotification(type, params).catch(() => undefined);
  }

  close(): void {
    this.connection.dispose();
    this.socket.destroy();
  }
}
