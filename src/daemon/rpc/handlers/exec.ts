import { PassThrough, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { MessageConnection } from 'vscode-jsonrpc/node.js';
import { ExecNotifications, VmMethods } from '../../../protocol/vm.js';
import type { VmService } from '../../services/vm/service.js';
import { handler, type Handler } from '../server.js';

/** Stdin streams of running execs, by exec id; fed by exec/stdin notifications of the same connection. */
export class ExecRegistry {
  private readonly byConnection = new WeakMap<MessageConnection, Map<string, ExecEntry>>();

  attach(connection: MessageConnection): void {
    const entries = new Map<string, ExecEntry>();
    this.byConnection.set(connection, entries);
    connection.onNotification(ExecNotifications.stdin, (raw: unknown) => {
      const msg = ExecNotifications.stdin.params.safeParse(raw);
      if (!msg.success) return;
      const e = entries.get(msg.data.execId);
      if (!e) return;
      if (msg.data.data) e.stdin.write(Buffer.from(msg.data.data, 'base64'));
      if (msg.data.eof) e.stdin.end();
    });
    connection.onNotification(ExecNotifications.signal, (raw: unknown) => {
      const msg = ExecNotifications.signal.params.safeParse(raw);
      if (msg.success) entries.get(msg.data.execId)?.signal?.(msg.data.signal);
    });
    connection.onNotification(ExecNotifications.resize, (raw: unknown) => {
      const msg = ExecNotifications.resize.params.safeParse(raw);
      if (msg.success) entries.get(msg.data.execId)?.resize?.(msg.data.rows, msg.data.cols);
    });
  }

  open(connection: MessageConnection, execId: string): ExecEntry {
    const entry: ExecEntry = { stdin: new PassThrough() };
    this.byConnection.get(connection)?.set(execId, entry);
    return entry;
  }

  close(connection: MessageConnection, execId: string): void {
    this.byConnection.get(connection)?.delete(execId);
  }
}

interface ExecEntry {
  stdin: PassThrough;
  resize?: (rows: number, cols: number) => void;
  signal?: (name: string) => void;
}

/** A stream that forwards each chunk to the client as an exec/output notification. */
function outputTo(connection: MessageConnection, execId: string, stream: 'stdout' | 'stderr'): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      try {
        connection.sendNotification(ExecNotifications.output, { execId, stream, data: chunk.toString('base64') }).then(
          () => cb(),
          cb,
        );
      } catch (e) {
        cb(e as Error); // the connection is closed
      }
    },
  });
}

/** vm.exec: runs a command over the VM's guest agent (or SSH), streaming its output as notifications. */
export function execHandlers(vms: VmService, execs: ExecRegistry): Handler[] {
  return [
    handler(VmMethods.exec, async (p, ctx) => {
      const entry = execs.open(ctx.connection, p.execId);
      const stdout = outputTo(ctx.connection, p.execId, 'stdout');
      const stderr = outputTo(ctx.connection, p.execId, 'stderr');
      try {
        const exitCode = await vms.guest.exec(p.name, p.argv, p.cwd, {
          stdin: p.stdin ? entry.stdin : undefined,
          stdout,
          stderr,
          pty: p.tty,
          onStart: (c) => {
            entry.resize = c.resize;
            entry.signal = c.signal;
          },
          signal: ctx.signal,
        });
        // The reply ends the client's wait: every output notification goes out before it. The process's
        // streams have ended, but their last chunks may still wait in these writers (each write waits for
        // the one before it); a reply sent now would overtake them, and the client would exit without them.
        await Promise.all([stdout, stderr].map((w) => finished(w.end()).catch(() => undefined)));
        return { exitCode };
      } finally {
        execs.close(ctx.connection, p.execId);
      }
    }),
  ];
}
