import { randomUUID } from 'node:crypto';
import { ExecNotifications, VmMethods } from '../protocol/vm.js';
import type { CliContext } from './context.js';
import { out } from './output.js';

export interface GuestExecRequest {
  vm: string;
  argv: string[];
  cwd?: string;
  /** Allocate a pty (interactive shells, -t). */
  tty: boolean;
}

/**
 * Runs a command in a VM through the daemon's SSH connection: guest stdout/stderr stream to ours,
 * our stdin streams to the guest. Returns the guest command's exit code.
 */
export async function runInGuest(ctx: CliContext, req: GuestExecRequest): Promise<number> {
  const client = await ctx.client();
  const conn = client.connection;
  const execId = randomUUID();
  const subOut = conn.onNotification(ExecNotifications.output, (msg) => {
    if (msg.execId !== execId) return;
    const data = Buffer.from(msg.data, 'base64');
    if (msg.stream === 'stdout') out.raw(data);
    else out.errRaw(data);
  });

  const stdin = process.stdin;
  const rawMode = req.tty && stdin.isTTY;
  const onData = (d: Buffer) => void conn.sendNotification(ExecNotifications.stdin, { execId, data: d.toString('base64') });
  const onEnd = () => void conn.sendNotification(ExecNotifications.stdin, { execId, eof: true });
  const onResize = () =>
    void conn.sendNotification(ExecNotifications.resize, {
      execId,
      rows: process.stdout.rows ?? 24,
      cols: process.stdout.columns ?? 80,
    });
  // Pass stdin through unless it is a terminal we were not asked to take over: then the guest sees EOF.
  const passStdin = req.tty || !stdin.isTTY;
  if (passStdin) {
    if (rawMode) stdin.setRawMode(true);
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.resume();
  }
  if (req.tty) process.stdout.on('resize', onResize);
  try {
    const tty = req.tty
      ? { rows: process.stdout.rows ?? 24, cols: process.stdout.columns ?? 80, term: process.env.TERM ?? 'xterm-256color' }
      : undefined;
    const { exitCode } = await client.call(
      VmMethods.exec,
      { name: req.vm, execId, argv: req.argv, cwd: req.cwd, tty, stdin: passStdin },
      { signal: ctx.signal },
    );
    return exitCode;
  } finally {
    subOut.dispose();
    if (passStdin) {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      if (rawMode) stdin.setRawMode(false);
      stdin.pause();
      stdin.unref?.();
    }
    if (req.tty) process.stdout.off('resize', onResize);
  }
}
