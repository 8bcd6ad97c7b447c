/**
 * `banger vm workspace prepare VM REPO` without commander, zod or vscode-jsonrpc (light-rpc.ts): a re-sync of
 * one edited file takes about a second, and loading those costs a tenth of it. The same vm.workspace.prepare
 * call with its progress, the same notices, result lines, errors and exit codes as the full path
 * (prepareWorkspace). Anything else (--json, --dry-run, --help, another flag, no daemon of this build running)
 * returns null: the full CLI runs instead.
 */
import { resolve } from 'node:path';
import { EXIT_CODES, cancelled, toBangerError } from '../errors/index.js';
import type { ProgressEvent } from '../protocol/common.js';
import type { WorkspacePrepareResult } from '../protocol/workspace.js';
import { connectToThisBuild } from './light-rpc.js';
import { ProgressRenderer, out, printBangerError, progressMode } from './output.js';
import { preparedLines } from './workspace-result.js';

export interface FastPrepareArgs {
  vm: string;
  repo: string;
  guestPath?: string;
  includeUntracked: boolean;
  force: boolean;
  full: boolean;
}

/** `vm workspace prepare VM REPO [--guest-path P|--guest-path=P] [--include-untracked] [--force] [--full]`, or null. */
export function parseFastPrepare(args: readonly string[]): FastPrepareArgs | null {
  if (args[0] !== 'vm' || args[1] !== 'workspace' || args[2] !== 'prepare') return null;
  const positional: string[] = [];
  let guestPath: string | undefined;
  const flags = { includeUntracked: false, force: false, full: false };
  for (let i = 3; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--include-untracked') flags.includeUntracked = true;
    else if (a === '--force') flags.force = true;
    else if (a === '--full') flags.full = true;
    else if (a === '--guest-path' && guestPath === undefined && i + 1 < args.length && !args[i + 1]!.startsWith('-'))
      guestPath = args[++i];
    else if (a.startsWith('--guest-path=') && guestPath === undefined && a.length > 13) guestPath = a.slice(13);
    else if (!a.startsWith('-')) positional.push(a);
    else return null;
  }
  if (positional.length !== 2) return null;
  return { vm: positional[0]!, repo: positional[1]!, guestPath, ...flags };
}

/** Runs the prepare and returns the exit code to leave with, or null when the full CLI must run it. */
export async function tryFastPrepare(args: readonly string[]): Promise<number | null> {
  const req = parseFastPrepare(args);
  if (req === null) return null;
  const rpc = await connectToThisBuild();
  if (rpc === null) return null;
  const renderer = await ProgressRenderer.create(progressMode({}));
  const call = rpc.request(
    'vm.workspace.prepare',
    {
      name: req.vm,
      sourcePath: resolve(req.repo),
      guestPath: req.guestPath,
      includeUntracked: req.includeUntracked || undefined,
      force: req.force || undefined,
      full: req.full || undefined,
    },
    (ev) => renderer.onEvent(ev as ProgressEvent),
  );
  // As the full CLI: the first Ctrl-C cancels the import, the next leaves at once.
  let interrupts = 0;
  const onSigint = () => {
    if (++interrupts > 1) process.exit(EXIT_CODES.Cancelled);
    rpc.notify('$/cancelRequest', { id: call.id });
  };
  process.on('SIGINT', onSigint);
  try {
    const r = (await call.reply) as WorkspacePrepareResult;
    renderer.finish(true);
    for (const l of preparedLines(r)) out.info(l);
    return 0;
  } catch (e) {
    renderer.finish(false);
    // After a Ctrl-C, whatever ended the call, the import was cancelled.
    if (interrupts > 0) return printBangerError(cancelled());
    return printBangerError(toBangerError(e));
  } finally {
    process.off('SIGINT', onSigint);
    rpc.close();
  }
}
