import { PassThrough, Writable } from 'node:stream';
import { z } from 'zod';
import type { MessageConnection } from 'vscode-jsonrpc/node.js';
import { Methods, Notifications, type ExecInput } from '../../protocol/methods.js';
import type { DaemonStatus } from '../../protocol/types.js';
import type { ImageService } from '../services/image/service.js';
import type { VmService } from '../services/vm/service.js';
import type { WorkspaceService } from '../services/workspace/service.js';
import type { DoctorService } from '../services/doctor.js';
import { handler, type Handler } from './server.js';

const progressToken = z.string().optional();
const vmRef = z.object({ name: z.string().min(1) });
const choice = <T extends string>(...v: [T, ...T[]]) => z.enum(v).optional();

export interface HandlerDeps {
  vms: VmService;
  workspaces: WorkspaceService;
  images: ImageService;
  doctor: DoctorService;
  status: () => DaemonStatus;
  /** Stops the daemon after the reply has been sent. */
  shutdown: () => void;
}

/** Stdin streams of running execs, by exec id; fed by exec/stdin notifications of the same connection. */
export class ExecRegistry {
  private readonly byConnection = new WeakMap<MessageConnection, Map<string, ExecEntry>>();

  attach(connection: MessageConnection): void {
    const entries = new Map<string, ExecEntry>();
    this.byConnection.set(connection, entries);
    connection.onNotification(Notifications.execInput, (msg: ExecInput) => {
      const e = entries.get(msg.execId);
      if (!e) return;
      if (msg.data) e.stdin.write(Buffer.from(msg.data, 'base64'));
      if (msg.eof) e.stdin.end();
    });
    connection.onNotification(Notifications.execResize, (msg) => entries.get(msg.execId)?.resize?.(msg.rows, msg.cols));
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
}

/** A stream that forwards each chunk to the client as an exec/output notification. */
function outputTo(connection: MessageConnection, execId: string, stream: 'stdout' | 'stderr'): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      connection
        .sendNotification(Notifications.execOutput, { execId, stream, data: chunk.toString('base64') })
        .then(() => cb(), cb);
    },
  });
}

export function buildHandlers(d: HandlerDeps, execs: ExecRegistry): Handler<any>[] { // eslint-disable-line @typescript-eslint/no-explicit-any
  return [
    handler(Methods.daemonStatus, null, async () => d.status()),
    handler(Methods.daemonStop, null, async () => {
      d.shutdown();
      return { stopping: true as const };
    }),
    handler(Methods.doctorRun, null, async (_p, ctx) => d.doctor.run(ctx.signal)),

    handler(
      Methods.imageBuild,
      z.object({ name: z.string().min(1), packages: z.array(z.string()).optional(), force: z.boolean().optional(), progressToken }),
      async (p, ctx) => d.images.build(p, ctx.progress, ctx.signal),
    ),
    handler(Methods.imageList, null, async () => d.images.list()),
    handler(Methods.imageShow, z.object({ name: z.string().min(1) }), async (p) => d.images.show(p.name)),
    handler(Methods.imageDelete, z.object({ name: z.string().min(1) }), async (p) => d.images.delete(p.name)),

    handler(
      Methods.vmCreate,
      z.object({
        name: z.string().optional(),
        image: z.string().min(1).optional(),
        cpus: z.number().int().optional(),
        memoryMib: z.number().int().optional(),
        diskSizeMib: z.number().int().optional(),
        vmm: choice('auto', 'qemu', 'firecracker'),
        accel: choice('auto', 'kvm', 'tcg'),
        start: z.boolean().optional(),
        egress: z.boolean().optional(),
        network: choice('loopback', 'tap'),
        progressToken,
      }),
      async (p, ctx) => {
        const created = await d.vms.create(p, ctx.progress, ctx.signal);
        return p.start ? d.vms.start(created.name, ctx.progress, ctx.signal) : created;
      },
    ),
    handler(Methods.vmStart, vmRef.extend({ progressToken }), async (p, ctx) => d.vms.start(p.name, ctx.progress, ctx.signal)),
    handler(
      Methods.vmStop,
      vmRef.extend({ force: z.boolean().optional(), timeoutSeconds: z.number().positive().optional() }),
      async (p, ctx) => d.vms.stop(p.name, p, ctx.signal),
    ),
    handler(Methods.vmRestart, vmRef.extend({ progressToken }), async (p, ctx) => d.vms.restart(p.name, ctx.progress, ctx.signal)),
    handler(Methods.vmDelete, vmRef.extend({ force: z.boolean().optional() }), async (p, ctx) =>
      d.vms.delete(p.name, p, ctx.signal),
    ),
    handler(Methods.vmList, null, async () => d.vms.list()),
    handler(Methods.vmShow, vmRef, async (p) => d.vms.show(p.name)),
    handler(Methods.vmLogs, vmRef.extend({ tailBytes: z.number().int().positive().optional() }), async (p) => ({
      console: await d.vms.consoleLog(p.name, p.tailBytes),
    })),
    handler(Methods.vmSshTarget, vmRef, async (p) => d.vms.sshTarget(p.name)),
    handler(Methods.vmPorts, vmRef, async (p, ctx) => d.vms.ports(p.name, ctx.signal)),
    handler(
      Methods.vmWorkspacePrepare,
      z.object({
        name: z.string().min(1),
        sourcePath: z.string().min(1),
        guestPath: z.string().min(1).optional(),
        includeUntracked: z.boolean().optional(),
        progressToken,
      }),
      async (p, ctx) => d.workspaces.prepare(p, ctx.progress, ctx.signal),
    ),
    handler(
      Methods.vmWorkspaceExport,
      z.object({ name: z.string().min(1), baseCommit: z.string().min(1).optional(), nameOnly: z.boolean().optional() }),
      async (p, ctx) => d.workspaces.export(p, ctx.signal),
    ),
    handler(
      Methods.vmExec,
      z.object({
        name: z.string().min(1),
        execId: z.string().min(1),
        argv: z.array(z.string()),
        cwd: z.string().optional(),
        tty: z.object({ rows: z.number().int(), cols: z.number().int(), term: z.string() }).optional(),
        stdin: z.boolean(),
      }),
      async (p, ctx) => {
        const entry = execs.open(ctx.connection, p.execId);
        try {
          const exitCode = await d.vms.exec(p.name, p.argv, p.cwd, {
            stdin: p.stdin ? entry.stdin : undefined,
            stdout: outputTo(ctx.connection, p.execId, 'stdout'),
            stderr: outputTo(ctx.connection, p.execId, 'stderr'),
            pty: p.tty,
            onStart: (c) => (entry.resize = c.resize),
            signal: ctx.signal,
          });
          return { exitCode };
        } finally {
          execs.close(ctx.connection, p.execId);
        }
      },
    ),
  ];
}
