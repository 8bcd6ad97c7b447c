import type { MessageConnection } from 'vscode-jsonrpc/node.js';
import { SessionMethods, SessionNotifications } from '../../../protocol/session.js';
import type { AgentSessionAttachment } from '../../guest/agent-channels.js';
import type { OutputChunk, SessionService } from '../../services/session/service.js';
import { handler, type Handler } from '../server.js';

/** Attachments by stream id, per connection: session/stdin notifications of that connection feed them. */
export class AttachRegistry {
  private readonly byConnection = new WeakMap<MessageConnection, Map<string, AgentSessionAttachment>>();
  /** A size that came before its attachment was made (the client says it at once): applied on `set`. */
  private readonly earlySize = new WeakMap<MessageConnection, Map<string, { cols: number; rows: number }>>();

  attach(connection: MessageConnection): void {
    const entries = new Map<string, AgentSessionAttachment>();
    this.byConnection.set(connection, entries);
    // Writes of one attach go in order: each waits for the previous one to be taken by the agent.
    const chains = new Map<string, Promise<void>>();
    connection.onNotification(SessionNotifications.stdin, (raw: unknown) => {
      const msg = SessionNotifications.stdin.params.safeParse(raw);
      if (!msg.success) return;
      const a = entries.get(msg.data.streamId);
      if (!a) return;
      const prev = chains.get(msg.data.streamId) ?? Promise.resolve();
      const next = prev
        .then(async () => {
          if (msg.data.data) await a.write(Buffer.from(msg.data.data, 'base64'));
          if (msg.data.eof) a.closeStdin();
        })
        .catch(() => undefined);
      chains.set(msg.data.streamId, next);
    });
    const early = new Map<string, { cols: number; rows: number }>();
    this.earlySize.set(connection, early);
    connection.onNotification(SessionNotifications.resize, (raw: unknown) => {
      const msg = SessionNotifications.resize.params.safeParse(raw);
      if (!msg.success) return;
      const { streamId, cols, rows } = msg.data;
      const a = entries.get(streamId);
      if (a) a.resize(cols, rows);
      // At most a few streams are being attached at once on a connection; a flood replaces, not grows.
      else if (early.size < 64 || early.has(streamId)) early.set(streamId, { cols, rows });
    });
  }

  set(connection: MessageConnection, streamId: string, a: AgentSessionAttachment): void {
    this.byConnection.get(connection)?.set(streamId, a);
    const early = this.earlySize.get(connection);
    const size = early?.get(streamId);
    early?.delete(streamId);
    if (size) a.resize(size.cols, size.rows);
  }

  delete(connection: MessageConnection, streamId: string): void {
    this.byConnection.get(connection)?.delete(streamId);
    this.earlySize.get(connection)?.delete(streamId);
  }
}

/** Sends each chunk as a session/output notification; the next chunk is asked for once it is written. */
function toClient(connection: MessageConnection, streamId: string) {
  return async (c: OutputChunk): Promise<void> => {
    await connection.sendNotification(SessionNotifications.output, {
      streamId,
      stream: c.stream,
      offset: c.offset,
      data: c.data.toString('base64'),
    });
  };
}

/** session.*: the guest agent's sessions of a VM. */
export function sessionHandlers(sessions: SessionService, attaches: AttachRegistry): Handler[] {
  return [
    handler(SessionMethods.start, async (p, ctx) => sessions.start(p, ctx.signal)),
    handler(SessionMethods.list, async (p, ctx) => sessions.list(p.vm, ctx.signal)),
    handler(SessionMethods.show, async (p, ctx) => sessions.show(p.vm, p.session, ctx.signal)),
    handler(SessionMethods.stop, async (p, ctx) => sessions.stop(p, ctx.signal)),
    handler(SessionMethods.rm, async (p, ctx) => sessions.rm(p.vm, p.session, ctx.signal)),
    handler(SessionMethods.logs, async (p, ctx) =>
      sessions.logs(
        { vm: p.vm, session: p.session, from: p.from, stream: p.stream, follow: p.follow },
        toClient(ctx.connection, p.streamId),
        ctx.signal,
      ),
    ),
    handler(SessionMethods.attach, async (p, ctx) => {
      try {
        return await sessions.attach(
          { vm: p.vm, session: p.session, from: p.from, client: p.client },
          toClient(ctx.connection, p.streamId),
          (a) => attaches.set(ctx.connection, p.streamId, a),
          ctx.signal,
        );
      } finally {
        attaches.delete(ctx.connection, p.streamId);
      }
    }),
    handler(SessionMethods.send, async (p, ctx) =>
      sessions.send(
        { vm: p.vm, session: p.session, sendId: p.sendId, data: Buffer.from(p.data, 'base64'), final: p.final },
        ctx.signal,
      ),
    ),
  ];
}
