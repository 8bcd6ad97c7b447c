import net from 'node:net';
import { randomUUID } from 'node:crypto';
import {
  CancellationTokenSource,
  createMessageConnection,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  type MessageConnection,
  type RequestType,
} from 'vscode-jsonrpc/node.js';
import { BangerError, ErrorCode } from '../errors/index.js';
import { fromWire } from '../errors/wire.js';
import { progressType, type ProgressEvent } from '../protocol/common.js';

export interface CallOptions {
  onProgress?: (ev: ProgressEvent) => void;
  /** Aborting sends a cancellation to the daemon, which stops the work. */
  signal?: AbortSignal;
}

/** A typed JSON-RPC client of bangerd over its unix socket. */
export class BangerClient {
  private constructor(
    readonly connection: MessageConnection,
    private readonly socket: net.Socket,
  ) {}

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
      return await this.connection.sendRequest(type, sent, cts.token);
    } catch (e) {
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

  close(): void {
    this.connection.dispose();
    this.socket.destroy();
  }
}
