import { startExec } from '../client/exec.js';
import type { CliContext } from './context.js';
import { out } from './output.js';
import { attachTerminal } from './terminal-io.js';

export interface GuestExecRequest {
  vm: string;
  argv: string[];
  cwd?: string;
  /** Allocate a pty (interactive shells, -t). */
  tty: boolean;
}

/**
 * Runs a command in a VM through the daemon's SSH connection: guest stdout/stderr stream to ours,
 * our stdin streams to the guest. Returns the guest command's exit code. The streaming is the API's
 * (`startExec`); this adds the terminal: raw mode, resize, and stdin left alone when it is a terminal
 * nobody asked for.
 */
export async function runInGuest(ctx: CliContext, req: GuestExecRequest): Promise<number> {
  const client = await ctx.client();
  const stdin = process.stdin;
  const rawMode = req.tty && stdin.isTTY;
  // Pass stdin through unless it is a terminal we were not asked to take over: then the guest sees EOF.
  const passStdin = req.tty || !stdin.isTTY;
  const h = startExec(client, {
    vm: req.vm,
    argv: req.argv,
    cwd: req.cwd,
    tty: req.tty
      ? { ...terminalSize(), term: process.env.TERM ?? 'xterm-256color' }
      : undefined,
    stdin: passStdin,
    onStdout: (d) => out.raw(d),
    onStderr: (d) => out.errRaw(d),
    signal: ctx.signal,
  });
  const onData = (d: Buffer) => h.write(d);
  const onEnd = () => h.end();
  const onResize = () => {
    const { rows, cols } = terminalSize();
    h.resize(rows, cols);
  };
  const detach = attachTerminal({ passStdin, rawMode, tty: req.tty, onData, onEnd, onResize });
  // In raw mode Ctrl-C is a byte the guest's terminal turns into SIGINT; otherwise forward it.
  if (!rawMode) ctx.onInterrupt = () => h.signal('SIGINT');
  try {
    return await h.exitCode;
  } finally {
    ctx.onInterrupt = undefined;
    detach();
  }
}

/** The terminal's size; 24x80 when it has none or reports 0 (a `script` or CI terminal that was never sized). */
export function terminalSize(): { rows: number; cols: number } {
  return { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 };
}
