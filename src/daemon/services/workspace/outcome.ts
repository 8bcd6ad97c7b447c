import type { ProgressEvent } from '../../../protocol/common.js';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { ImportTarProgress } from './pack.js';
import { MISE_NOTICE_PREFIX, SCRIPT_STDERR_PREFIX, TREE_LINE_PREFIX, WorkspaceScriptExit } from './guest-scripts.js';

/** What the workspace service tells the user about a transfer: progress, notices, errors of its scripts. */

type Progress = (ev: ProgressEvent) => void;

const PROGRESS_INTERVAL_MS = 200;

/**
 * Byte progress of an import (`count`: its entries), a few events a second (one per file would be one notification per file):
 * file contents and git packs sent. Until the end the total is the working tree's size (the packs carry
 * the files the guest checks out, compressed, and history); at the end it is what was really sent.
 */
export function byteProgress(progress: Progress, list: { count: number; totalBytes: number }) {
  let last = 0;
  return (t: ImportTarProgress) => {
    const now = Date.now();
    const end = t.final === true || t.files >= list.count;
    if (now - last < PROGRESS_INTERVAL_MS && !end) return;
    last = now;
    const total = t.final ? t.bytes : Math.max(list.totalBytes, t.bytes);
    progress({ kind: 'bytes', step: 'import', done: t.bytes, total, files: t.files });
  };
}

export function miseNotices(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith(MISE_NOTICE_PREFIX))
    .map((l) => l.slice(SCRIPT_STDERR_PREFIX.length));
}

/** The last line a script wrote about its own work (without the prefix). */
export function lastScriptLine(stderr: string): string {
  const own = stderr.split('\n').filter((l) => l.startsWith(SCRIPT_STDERR_PREFIX));
  return own.at(-1)?.slice(SCRIPT_STDERR_PREFIX.length) ?? 'the workspace is not what the last import left';
}

/** Maps a failed guest script to an error the user can act on. */
export function scriptError(what: 'import' | 'export', code: number, stderr: string, guestPath: string): BangerError {
  const own = stderr
    .split('\n')
    .filter(
      (l) => l.startsWith(SCRIPT_STDERR_PREFIX) && !l.startsWith(MISE_NOTICE_PREFIX) && !l.startsWith(TREE_LINE_PREFIX),
    )
    .map((l) => l.slice(SCRIPT_STDERR_PREFIX.length));
  const detail =
    own.at(-1) ??
    stderr
      .split('\n')
      .filter((l) => l.trim() !== '')
      .slice(-3)
      .join(' ');
  // Whatever step met it, a full guest disk is the cause to name (tar's own line says so; the script's may not).
  if (/No space left on device/.test(stderr))
    return new BangerError(ErrorCode.ResourceExhausted, `the workspace ${what} into ${guestPath} failed: the guest's disk is full`, {
      hint: 'make room in the guest, or stop the VM and grow its work disk with `banger vm set NAME --disk-size SIZE`',
    });
  switch (code) {
    case WorkspaceScriptExit.PathInUse:
      return new BangerError(ErrorCode.FailedPrecondition, detail, {
        hint: 'pass --guest-path with another directory',
      });
    case WorkspaceScriptExit.NoWorkspace:
      return new BangerError(ErrorCode.FailedPrecondition, detail, {
        hint: 'import the repo again with `banger vm workspace prepare`',
      });
    case WorkspaceScriptExit.BadBase:
      return new BangerError(ErrorCode.InvalidArgument, detail);
    default:
      return new BangerError(
        ErrorCode.Internal,
        `the workspace ${what} into ${guestPath} failed in the guest (exit ${code}): ${detail || '(no output)'}`,
      );
  }
}
