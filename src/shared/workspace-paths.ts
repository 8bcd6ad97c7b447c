import { BangerError, ErrorCode } from '../errors/index.js';
import type { ImportEntry } from './workspace-files.js';

/**
 * The rules an import's entry paths obey, checked on the host before anything is sent: every name stays
 * below the workspace, and no path goes through a symlink or file of the same list.
 */

/**
 * Rejects names the import cannot carry faithfully or safely: the tar unpacked in the guest must
 * only create paths below the workspace, and names the CommandRunner decoded lossily would point at
 * files that do not exist.
 */
export function validateEntryPath(path: string): void {
  const bad = (why: string) =>
    new BangerError(ErrorCode.InvalidArgument, `cannot import ${JSON.stringify(path)}: ${why}`, {
      hint: 'rename the file, or remove it from the checkout',
    });
  if (path === '') throw bad('empty name');
  if (path.includes('\uFFFD')) throw bad('the name is not valid UTF-8');
  if (path.includes('\0')) throw bad('the name contains a NUL byte');
  if (path.startsWith('/')) throw bad('absolute name');
  for (const part of path.split('/')) {
    if (part === '' || part === '.' || part === '..') throw bad('the name has an empty, "." or ".." component');
    if (part.toLowerCase() === '.git') throw bad('the name has a ".git" component');
  }
}

/**
 * Refuses an entry list where a path goes through another entry that is a symlink or a file
 * (`link/x` with `link` a symlink): unpacking it would write through the link. `files`: more paths of
 * files or symlinks, checked the same way (a full import's files checked out of HEAD).
 * Git never tracks such paths; this guards the list against a working tree changed under us.
 */
export function assertNoPathThroughSymlink(entries: readonly ImportEntry[], files: readonly string[] = []): void {
  const leaves = new Set(files);
  for (const e of entries) if (e.kind !== 'dir') leaves.add(e.path);
  const check = (path: string) => {
    let i = path.indexOf('/');
    while (i !== -1) {
      const prefix = path.slice(0, i);
      if (leaves.has(prefix)) {
        throw new BangerError(
          ErrorCode.InvalidArgument,
          `cannot import ${JSON.stringify(path)}: ${JSON.stringify(prefix)} is a file or symlink, not a directory`,
          { hint: 'the working tree changed while it was being read: run the import again' },
        );
      }
      i = path.indexOf('/', i + 1);
    }
  };
  for (const e of entries) check(e.path);
  for (const p of files) check(p);
}
