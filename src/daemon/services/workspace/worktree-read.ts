import { constants } from 'node:fs';
import { open, readlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { parentsAreDirs, worktreeKind } from '../../../shared/worktree.js';

/** Reading one working-tree file for an import: as git sees it now, never outside the checkout, never blocking. */

export function changed(abs: string, err?: unknown): BangerError {
  return new BangerError(ErrorCode.Conflict, `${abs} changed while it was being imported`, {
    hint: 'run the import again once the file is no longer being written',
    ...(err === undefined ? {} : { cause: err }),
  });
}

type Opened =
  | { kind: 'gone' }
  | { kind: 'special' }
  | { kind: 'symlink'; target: string }
  | { kind: 'file'; fh: FileHandle; size: number; mode: number; mtime: Date };

/**
 * Opens one listed path as git would see it now, without following a symlink anywhere below `root`
 * and without blocking: every leading directory must be a real directory (else 'gone'); the path
 * itself is opened with O_NOFOLLOW (a symlink fails with ELOOP and is read as a link) and O_NONBLOCK
 * (a FIFO opens at once), then its type is taken from fstat of that descriptor. The descriptor's own
 * path (/proc/self/fd) must be the entry's path under the checkout's real path, which closes the race
 * of a directory swapped for a symlink between the check and the open. The caller closes `fh`.
 */
export async function openEntry(
  root: string,
  realRoot: string,
  path: string,
  dirs: Map<string, boolean>,
): Promise<Opened> {
  if (!parentsAreDirs(root, path, dirs)) return { kind: 'gone' };
  const abs = join(root, path);
  let fh: FileHandle;
  try {
    fh = await open(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { kind: 'gone' };
    // A unix socket cannot be opened at all.
    if (code === 'ENXIO') return { kind: 'special' };
    if (code !== 'ELOOP') throw changed(abs, err);
    try {
      return { kind: 'symlink', target: await readlink(abs) };
    } catch (err2) {
      if ((err2 as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'gone' };
      throw changed(abs, err2);
    }
  }
  try {
    const st = await fh.stat();
    const kind = worktreeKind(st);
    if (kind === 'file') {
      const at = await readlink(`/proc/self/fd/${fh.fd}`);
      if (at !== join(realRoot, path)) throw changed(abs);
      return { kind, fh, size: st.size, mode: st.mode & 0o111 ? 0o755 : 0o644, mtime: st.mtime };
    }
    await fh.close();
    return { kind: kind === 'gone' ? 'gone' : 'special' };
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err instanceof BangerError ? err : changed(abs, err);
  }
}

/** Reads exactly `size` bytes from the start of a file; a file that is shorter now has changed. */
export async function readExactly(fh: FileHandle, size: number, abs: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(size);
  let got = 0;
  while (got < size) {
    const { bytesRead } = await fh.read(buf, got, size - got, got);
    if (bytesRead === 0) throw changed(abs);
    got += bytesRead;
  }
  return buf;
}
