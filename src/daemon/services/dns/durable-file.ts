/**
 * Replacing a host file (the hosts file, banger's DNS state) so that a kill or a power loss at any moment
 * leaves either the old bytes or the new bytes, never a truncated file:
 *
 * 1. write the new bytes to a temp file in the same directory, set the original's mode and owner on it,
 *    fsync it;
 * 2. rename it over the file (atomic within one filesystem), fsync the directory so the rename is durable.
 *
 * A file that is a mount point cannot be renamed over (EBUSY; /etc/hosts is bind-mounted into every
 * Docker and Podman container) and one on another filesystem than its directory gives EXDEV. Refusing
 * there would make `banger dns install` useless in containers, so with `inPlaceFallback` the file is
 * rewritten in place, but only after a complete copy of its current bytes has been made durable beside
 * it (`backupPathOf`): a kill during the rewrite leaves that backup, and `recoverInterrupted` (called
 * before every read) puts it back. Only then is the backup removed.
 */
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';

export interface DurableWriteOptions {
  /** Mode of a file that does not exist yet; an existing file keeps its own mode and owner. */
  mode?: number;
  /** Rewrite in place (after a durable backup) when the file cannot be renamed over. */
  inPlaceFallback?: boolean;
  /** Called when the in-place fallback is used, so the caller can log it. */
  onInPlace?: (reason: string) => void;
}

/** The backup of `file` made before an in-place rewrite; it exists only while one is under way or was interrupted. */
export function backupPathOf(file: string): string {
  return join(dirname(file), `.${basename(file)}.banger-backup`);
}

/** The file a write goes to: a symlink is followed, so the link stays a link (as the ssh-config editor does). */
function target(file: string): string {
  try {
    return realpathSync(file);
  } catch {
    return file;
  }
}

/**
 * Restores `file` from the backup an interrupted in-place rewrite left. Returns whether it did. The backup
 * is removed only after the restored bytes are on disk, so a kill here is recovered the next time too.
 */
export function recoverInterrupted(file: string): boolean {
  const real = target(file);
  const backup = backupPathOf(real);
  if (!existsSync(backup)) return false;
  writeWholeInPlace(real, readFileSync(backup));
  unlinkSync(backup);
  fsyncDir(dirname(real));
  return true;
}

/** Replaces `file` with `data` durably (see the module comment). */
export function durableWrite(file: string, data: string | Buffer, opts: DurableWriteOptions = {}): void {
  const real = target(file);
  const dir = dirname(real);
  const st = existsSync(real) ? statSync(real) : undefined;
  const tmp = join(dir, `.${basename(real)}.banger-${process.pid}`);
  writeNewFile(tmp, data, st ? st.mode & 0o7777 : (opts.mode ?? 0o644), st);
  try {
    renameSync(tmp, real);
  } catch (e) {
    rmSync(tmp, { force: true });
    const code = (e as NodeJS.ErrnoException).code;
    if (!(code === 'EBUSY' || code === 'EXDEV') || !st) throw e;
    if (!opts.inPlaceFallback)
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `cannot replace ${real}: it is a mount point or on another filesystem than ${dir} (${code})`,
        { hint: `edit ${real} by hand, or make it a regular file`, cause: e },
      );
    opts.onInPlace?.(`${real} cannot be renamed over (${code}): rewriting it in place after a backup`);
    const backup = backupPathOf(real);
    const backupTmp = `${backup}.tmp`;
    writeNewFile(backupTmp, readFileSync(real), 0o600, undefined);
    renameSync(backupTmp, backup);
    fsyncDir(dir);
    writeWholeInPlace(real, data);
    unlinkSync(backup);
    fsyncDir(dir);
    return;
  }
  fsyncDir(dir);
}

/** Creates `path` with `data`, the given mode (not reduced by the umask) and owner, fsynced. */
function writeNewFile(
  path: string,
  data: string | Buffer,
  mode: number,
  owner: { uid: number; gid: number } | undefined,
): void {
  const fd = openSync(path, 'w', 0o600);
  try {
    writeAll(fd, data);
    if (owner) chownSync(path, owner.uid, owner.gid);
    chmodSync(path, mode);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(path, { force: true });
    throw e;
  }
  closeSync(fd);
}

/** Overwrites an existing file's bytes (same inode, so a bind mount sees it), truncates to length, fsyncs. */
function writeWholeInPlace(path: string, data: string | Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    const length = writeAll(fd, data);
    ftruncateSync(fd, length);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, data: string | Buffer): number {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, off);
  return buf.length;
}

/** Makes a rename or unlink in `dir` durable. */
function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
