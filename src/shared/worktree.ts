import { lstatSync } from 'node:fs';
import { join } from 'node:path';

/** How an import sees a host working tree: the way git does, never through a symlink. */

/**
 * Whether every directory between `root` and `path` is a real directory (not a symlink): git never
 * follows a symlink in a leading component, so a tracked `d/f` whose `d` became a symlink is, for git,
 * deleted ("beyond a symbolic link"), and reading it would read outside the checkout. `cache` holds
 * answers per directory for one listing or one import; each directory costs one synchronous lstat (a few
 * microseconds, against a thread-pool round trip for fs.promises).
 */
export function parentsAreDirs(root: string, path: string, cache: Map<string, boolean>): boolean {
  const slash = path.lastIndexOf('/');
  if (slash === -1) return true;
  const dir = path.slice(0, slash);
  let answer = cache.get(dir);
  if (answer === undefined) {
    answer = parentsAreDirs(root, dir, cache) && lstatSync(join(root, dir), { throwIfNoEntry: false })?.isDirectory() === true;
    cache.set(dir, answer);
  }
  return answer;
}

/** What a working-tree path is, the way git sees it. */
export type WorktreeKind = 'file' | 'symlink' | 'gone' | 'special';

/**
 * Classifies a type from lstat/fstat: 'gone' is what git treats as deleted (missing, or a directory
 * now), 'special' a FIFO, socket or device, which git cannot track and an import never reads.
 */
export function worktreeKind(st: { isFile(): boolean; isSymbolicLink(): boolean; isDirectory(): boolean }): WorktreeKind {
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isDirectory()) return 'gone';
  return 'special';
}
