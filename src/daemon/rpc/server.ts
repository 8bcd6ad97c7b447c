import net from 'node:net';
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import {
  createMessageConnection,
  ResponseError,
  SocketMessageWriter,
  type MessageConnection,
  type ResponseMessage,
} from 'vscode-jsonrpc/node.js';
import { BangerError, ErrorCode, toBangerError } from '../../errors/index.js';
import { toWire } from '../../errors/wire.js';
import {
  progressType,
  type ParamsOut,
  type ParamsSchema,
  type ProgressEvent,
  type RpcMethod,
  type WithProgress,
} from '../../protocol/common.js';
import type { Logger } from '../../shared/logger.js';
import { CappedSocketReader, MAX_MESSAGE_BYTES } from './framing.js';

/** What a handler gets besides its params. */
export interface CallContext {
  /** Aborted when the client cancels the request or disconnects. */
  signal: AbortSignal;
  /** Reports progress under the request's progress token (no-op without one). */
  progress: (ev: ProgressEvent) => void;
  /** The client's connection, for method-specific notifications (exec output) and its close. */
  connection: MessageConnection;
}

type AnyMethod = RpcMethod<any, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A method and the function serving it; params are validated with the method's own schema first. */
export interface Handler {
  method: AnyMethod;
  run: (params: unknown, ctx: CallContext) => Promise<unknown>;
}

/** Binds a method to its implementation; the params type is the method's schema output. */
export function handler<S extends ParamsSchema, R>(
  method: RpcMethod<S, R>,
  run: (params: ParamsOut<S>, ctx: CallContext) => Promise<R>,
): Handler {
  return { method, run: run as Handler['run'] };
}

/** How long a cancelled request may go on before the log says so (a warning, once). */
const LINGER_WARN_MS = 30_000;

/** The longest string the daemon puts in a log line or an error reply; the rest is cut off with a marker. */
export const MAX_TEXT = 2048;

/** `s` cut to `max` characters, saying how much was dropped. */
export function capText(s: string, max = MAX_TEXT): string {
  return s.length <= max ? s : `${s.slice(0, max)}… [${s.length - max} more characters]`;
}

/** An error as a log field: type, code, capped message and stack; never the whole object. */
function errField(e: unknown): Record<string, string> {
  if (!(e instanceof Error)) return { message: capText(String(e)) };
  return { type: e.name, message: capText(e.message), ...(e.stack ? { stack: capText(e.stack, 2 * MAX_TEXT) } : {}) };
}

export interface RpcServerOptions {
  socketPath: string;
  handlers: Handler[];
  log: Logger;
  /** Called for every new connection so services can register notification handlers (exec stdin). */
  onConnection?: (connection: MessageConnection) => void;
  /** The largest message accepted; a bigger one closes its connection. */
  maxMessageBytes?: number;
  /** How long a cancelled request may go on before the log warns (default LINGER_WARN_MS). */
  lingerWarnMs?: number;
}

/** Serves JSON-RPC over a unix socket that only the daemon's owner can use (mode 0600). */
export class RpcServer {
  private readonly server: net.Server;
  private readonly connections = new Set<MessageConnection>();

  constructor(private readonly opts: RpcServerOptions) {
    const seen = new Set<string>();
    for (const h of opts.handlers) {
      if (seen.has(h.method.method)) throw new Error(`two handlers for ${h.method.method}`);
      seen.add(h.method.method);
    }
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

  /** Clients connected now. */
  get connectionCount(): number {
    return this.connections.size;
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
    const log = this.opts.log;
    const writer = new SocketMessageWriter(socket);
    const reader = new CappedSocketReader(socket, {
      maxMessageBytes: this.opts.maxMessageBytes ?? MAX_MESSAGE_BYTES,
      onBadMessage: (code, message) => {
        log.info({ code }, 'rpc: unreadable message answered with an error');
        const reply: ResponseMessage = { jsonrpc: '2.0', id: null, error: { code, message } };
        writer.write(reply).catch(() => undefined);
      },
      onViolation: (reason) => log.warn({ reason: capText(reason, 200) }, 'rpc: connection closed: unframeable input'),
    });
    const connection = createMessageConnection(reader, writer);
    const inflight = new Set<AbortController>();
    this.connections.add(connection);
    for (const h of this.opts.handlers) {
      connection.onRequest(h.method, async (raw: unknown, token) => {
        const ac = new AbortController();
        inflight.add(ac);
        const sub = token.onCancellationRequested(() => ac.abort(new BangerError(ErrorCode.Cancelled, 'cancelled')));
        const started = Date.now();
        // Work that goes on long after it was cancelled is a bug (it may hold a VM's lock): the log says which.
        let lingering: NodeJS.Timeout | undefined;
        ac.signal.addEventListener(
          'abort',
          () => {
            const after = this.opts.lingerWarnMs ?? LINGER_WARN_MS;
            lingering = setTimeout(() => {
              log.warn({ method: h.method.method, ms: Date.now() - started }, `rpc still running ${after} ms after it was cancelled`);
            }, after).unref();
          },
          { once: true },
        );
        try {
          const params = validate(h.method, raw);
          const progressToken = (params as WithProgress | undefined)?.progressToken;
          const progress = (ev: ProgressEvent) => {
            if (progressToken === undefined) return;
            // Progress is best effort: a client that has gone away must not fail the work it started.
            try {
              connection.sendProgress(progressType, progressToken, ev).catch(() => undefined);
            } catch {
              /* connection closed */
            }
          };
          const result = await h.run(params, { signal: ac.signal, progress, connection });
          log.info({ method: h.method.method, ms: Date.now() - started }, 'rpc ok');
          return result;
        } catch (e) {
          const err = ac.signal.aborted ? new BangerError(ErrorCode.Cancelled, 'cancelled') : toBangerError(e);
          const level = err.code === ErrorCode.Internal ? 'error' : 'info';
          const message = capText(err.message);
          log[level]({ method: h.method.method, code: err.code, err: errField(e), ms: Date.now() - started }, message);
          const w = toWire(new BangerError(err.code, message, { hint: err.hint === undefined ? undefined : capText(err.hint) }));
          return new ResponseError(w.code, w.message, w.data);
        } finally {
          clearTimeout(lingering);
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
      setImmediate(() => connection.dispose());
    });
    // A socket error is always followed by 'close', which ends the connection above; disposing here
    // instead would suppress the close event that cancels the client's work.
    connection.listen();
  }
}

function validate(method: AnyMethod, raw: unknown): unknown {
  const schema = method.params as ParamsSchema;
  if (!schema) return raw;
  const parsed = schema.safeParse(raw ?? {});
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
  // The issue message can quote the bad value, which can be megabytes long.
  const what = capText(issue?.message ?? 'bad params', 200);
  throw new BangerError(ErrorCode.InvalidArgument, `invalid ${method.method} request: ${where}${what}`);
}
