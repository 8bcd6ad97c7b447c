/**
 * `banger vm exec VM -- COMMAND...` without commander, zod or vscode-jsonrpc: those take longer to load than
 * a short guest command takes to run. Plain JSON-RPC 2.0 (Content-Length framing) over the daemon's socket,
 * the same vm.show + vm.exec calls and exec/* notifications as the full path (`runInGuest`), the same
 * output, errors and exit codes. Anything it does not handle (other flags, --help, no daemon of this build
 * running, a VM whose workspace's host repo has moved HEAD since the import) returns null: the full CLI runs
 * instead, and warns.
 */
import { existsSync } from 'node:fs';
import { BangerError, ErrorCode, EXIT_CODES, toBangerError } from '../errors/index.js';
import { out, printBangerError } from './output.js';
import { connectToThisBuild, type LightRpc } from './light-rpc.js';
import { attachTerminal } from './terminal-io.js';
import { runCommand } from '../shared/command.js';
import { headCommitOf } from '../shared/git-head.js';

interface FastExecArgs {
  vm: string;
  argv: string[];
  cwd?: string;
  tty: boolean;
}

/** `vm exec [-t|--tty] [-w DIR|--workdir DIR|--workdir=DIR] VM -- COMMAND...`, or null. */
export function parseFastExec(args: readonly string[]): FastExecArgs | null {
  if (args[0] !== 'vm' || args[1] !== 'exec') return null;
  const dd = args.indexOf('--');
  if (dd < 0 || dd === args.length - 1) return null;
  let vm: string | undefined;
  let cwd: string | undefined;
  let tty = false;
  for (let i = 2; i < dd; i++) {
    const a = args[i]!;
    if (a === '-t' || a === '--tty') tty = true;
    else if ((a === '-w' || a === '--workdir') && i + 1 < dd && !args[i + 1]!.startsWith('-')) cwd = args[++i];
    else if (a.startsWith('--workdir=') && a.length > 10) cwd = a.slice(10);
    else if (!a.startsWith('-') && vm === undefined) vm = a;
    else return null;
  }
  return vm === undefined ? null : { vm, argv: args.slice(dd + 1), cwd, tty };
}

/** Runs the command and returns the exit code to leave with, or null when the full CLI must run it. */
export async function tryFastExec(args: readonly string[]): Promise<number | null> {
  const req = parseFastExec(args);
  if (req === null) return null;
  const rpc = await connectToThisBuild();
  if (rpc === null) return null;
  try {
    const vm = (await rpc.request('vm.show', { name: req.vm }).reply) as {
      workspace?: { sourcePath: string; headCommit: string | null } | null;
    };
    // A workspace whose host repo is here and whose HEAD moved since the import: the full CLI warns.
    const ws = vm.workspace;
    if (ws && existsSync(ws.sourcePath) && (await headCommitOf(ws.sourcePath, runCommand)) !== ws.headCommit) return null;
    return await run(rpc, req);
  } catch (e) {
    return printBangerError(toBangerError(e));
  } finally {
    rpc.close();
  }
}

/** What `runInGuest` does: stream output, pass stdin (unless an unasked-for terminal), raw mode, resize, Ctrl-C. */
async function run(rpc: LightRpc, req: FastExecArgs): Promise<number> {
  // Exec ids are scoped to their connection, and this one carries this exec alone (node:crypto, for a
  // random id, would add its load time to every command).
  const execId = `exec-${process.pid}`;
  rpc.onNotification = (method, params) => {
    const p = params as { execId?: string; stream?: string; data?: string };
    if (method !== 'exec/output' || p.execId !== execId || typeof p.data !== 'string') return;
    const data = Buffer.from(p.data, 'base64');
    if (p.stream === 'stdout') out.raw(data);
    else out.errRaw(data);
  };
  const stdin = process.stdin;
  const rawMode = req.tty && stdin.isTTY;
  const passStdin = req.tty || !stdin.isTTY;
  const size = () => ({ rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 });
  const tty = req.tty ? { ...size(), term: process.env.TERM ?? 'xterm-256color' } : undefined;
  const call = rpc.request('vm.exec', { name: req.vm, execId, argv: req.argv, cwd: req.cwd, tty, stdin: passStdin });
  const onData = (d: Buffer) => {
    if (d.length > 0) rpc.notify('exec/stdin', { execId, data: d.toString('base64') });
  };
  const onEnd = () => rpc.notify('exec/stdin', { execId, eof: true });
  const onResize = () => rpc.notify('exec/resize', { execId, ...size() });
  // As the full CLI: in raw mode Ctrl-C is a byte for the guest's terminal; otherwise the first goes to the
  // command as SIGINT, the next cancels, a third leaves at once.
  let interrupts = 0;
  let cancelled = false;
  const onSigint = () => {
    interrupts++;
    const forward = !rawMode;
    if (forward && interrupts === 1) return rpc.notify('exec/signal', { execId, signal: 'SIGINT' });
    if (interrupts > (forward ? 2 : 1)) process.exit(EXIT_CODES.Cancelled);
    cancelled = true;
    rpc.notify('$/cancelRequest', { id: call.id });
  };
  process.on('SIGINT', onSigint);
  const detach = attachTerminal({ passStdin, rawMode, tty: req.tty, onData, onEnd, onResize });
  try {
    const r = (await call.reply) as { exitCode: number };
    return r.exitCode;
  } catch (e) {
    if (cancelled) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
    throw e;
  } finally {
    process.off('SIGINT', onSigint);
    detach();
  }
}
