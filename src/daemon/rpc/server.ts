import net from 'node:net';
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import {
  createMessageConnection,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  type MessageConnection,
  type RequestType,
} from 'vscode-jsonrpc/node.js';
import type { ZodType } from 'zod';
import { BangerError, ErrorCode, toBangerError } from '../../errors/index.js';
import { toWire } from '../../errors/wire.js';
import { progressType, type WithProgress } from '../../protocol/methods.js';
import type { ProgressEvent } from '../../protocol/types.js';
import type { Logger } from '../../shared/logger.js';

/** What a handler gets besides its params. */
export interface CallContext {
  /** Aborted when the client cancels the request or disconnects. */
  signal: AbortSignal;
  /** Reports progress under the request's progress token (no-op without one). */
  progress: (ev: ProgressEvent) => void;
  /** The client's connection, for method-specific notifications (exec output). */
  connection: MessageConnection;
}

type AnyRequestType = RequestType<any, any, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type ParamsOf<T> = T extends RequestType<infer P, unknown, unknown> ? P : never;
type ResultOf<T> = T extends RequestType<unknown, infer R, unknown> ? R : never;

export interface Handler<T extends AnyRequestType> {
  type: T;
  /** Validates params at the boundary; a failure is an InvalidArgument naming the bad field. */
  schema: ZodType<ParamsOf<T>> | null;
  run: (params: ParamsOf<T>, ctx: CallContext) => Promise<ResultOf<T>>;
}

export function handler<T extends AnyRequestType>(
  type: T,
  schema: ZodType<ParamsOf<T>> | null,
  run: (params: ParamsOf<T>, ctx: CallContext) => Promise<ResultOf<T>>,
): Handler<T> {
  return { type, schema, run };
}

export interface RpcServerOptions {
  socketPath: string;
  handlers: Handler<AnyRequestType>[];
  log: Logger;
  /** Called for every new connection so services can register notification handlers (exec stdin). */
  onConnection?: (connection: MessageConnection) => void;
}

/** Serves JSON-RPC over a unix socket that only the daemon's owner can use (mode 0600). */
export class RpcServer {
  private readonly server: net.Server;
  private readonly connections = new Set<MessageConnection>();

  constructor(private readonly opts: RpcServerOptions) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  async listen(): Promise<void> {
    const path = this.opts.socketPath;
    if (existsSync(path)) unlinkSync(path); // the caller has made sure no other daemon answers on it
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      // Create the socket with no access for group/others from the first moment.
      const oldMask = process.umask(0o177);
      this.server.listen(path, () => {
        process.umask(oldMask);
        resolve();
      });
    });
    chmodSync(path, 0o600);
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.dispose();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    try {
      unlinkSync(this.opts.socketPath);
    } catch {
      /* already gone */
    }
  }

  private accept(socket: net.Socket): void {
    const connection = createMessageConnection(new SocketMessageReader(socket), new SocketMessageWriter(socket));
    const inflight = new Set<AbortController>();
    this.connections.add(connection);
    const log = this.opts.log;
    for (const h of this.opts.handlers) {
      connection.onRequest(h.type, async (raw: unknown, token) => {
        const ac = new AbortController();
        inflight.add(ac);
        const sub = token.onCancellationRequested(() => ac.abort(new BangerError(ErrorCode.Cancelled, 'cancelled')));
        const started = Date.now();
        try {
          const params = validate(h, raw);
          const progressToken = (params as WithProgress | undefined)?.progressToken;
          const progress = (ev: ProgressEvent) => {
            if (progressToken !== undefined) void connection.sendProgress(progressType, progressToken, ev);
          };
          const result: unknown = await h.run(params, { signal: ac.signal, progress, connection });
          log.info({ method: h.type.method, ms: Date.now() - started }, 'rpc ok');
          return result;
        } catch (e) {
          const err = ac.signal.aborted ? new BangerError(ErrorCode.Cancelled, 'cancelled') : toBangerError(e);
          const level = err.code === ErrorCode.Internal ? 'error' : 'info';
          log[level]({ method: h.type.method, code: err.code, err: e, ms: Date.now() - started }, err.message);
          const w = toWire(err);
          return new ResponseError(w.code, w.message, w.data);
        } finally {
          sub.dispose();
          inflight.delete(ac);
        }
      });
    }
    this.opts.onConnection?.(connection);
    connection.onClose(() => {
      // A client that went away (Ctrl-C, killed) cancels what it asked for.
      for (const ac of inflight) ac.abort(new BangerError(ErrorCode.Cancelled, 'client disconnected'));
      this.connections.delete(connection);
    });
    socket.on('error', () => connection.dispose());
    connection.listen();
  }
}

function validate<T extends AnyRequestType>(h: Handler<T>, raw: unknown): ParamsOf<T> {
  if (!h.schema) return raw as ParamsOf<T>;
  const parsed = h.schema.safeParse(raw ?? {});
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
  throw new BangerError(ErrorCode.InvalidArgument, `invalid ${h.type.method} request: ${where}${issue?.message ?? 'bad params'}`);
}
