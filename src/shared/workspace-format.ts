import type { ImportEntry, ImportFileList } from './workspace-files.js';

/** How the host side of a workspace import is shown: notices of what was left out, the `--dry-run` listing. */

/** One line to show when untracked files were left out, or null. */
export function untrackedNotice(skippedUntracked: number): string | null {
  if (skippedUntracked === 0) return null;
  const files = skippedUntracked === 1 ? '1 untracked file was' : `${skippedUntracked} untracked files were`;
  return `${files} not imported: pass --include-untracked to import them (ignored files are never imported)`;
}

/** One line to show when FIFOs, sockets or devices were left out, or null. */
export function specialFileNotice(paths: readonly string[]): string | null {
  if (paths.length === 0) return null;
  return `not imported, as they are not regular files, symlinks or directories: ${paths.map(displayName).join(', ')}`;
}

/** One line to show when submodules were left out, or null. */
export function submoduleNotice(skippedSubmodules: readonly string[]): string | null {
  if (skippedSubmodules.length === 0) return null;
  return `submodules are imported as empty directories, without their contents: ${skippedSubmodules.join(', ')}`;
}

/** One line to show when untracked git repositories inside the checkout were left out, or null. */
export function nestedRepositoryNotice(paths: readonly string[]): string | null {
  if (paths.length === 0) return null;
  return `git repositories inside the checkout are not imported, nor their files: ${paths.map(displayName).join(', ')}`;
}

/**
 * The notices of what a listing left out, in the order they are shown (`special`: the special files, when more
 * were met later than the listing, as a full import's tar does).
 */
export function listNotices(
  list: Pick<ImportFileList, 'skippedUntracked' | 'skippedSubmodules' | 'skippedRepositories' | 'skippedSpecial'>,
  special: readonly string[] = list.skippedSpecial,
): string[] {
  return [
    untrackedNotice(list.skippedUntracked),
    submoduleNotice(list.skippedSubmodules),
    nestedRepositoryNotice(list.skippedRepositories),
    specialFileNotice(special),
  ].filter((n): n is string => n !== null);
}

/** git's mode for an entry: 100644, 100755, 120000 (symlink) or 160000 (a submodule's directory). */
export function gitMode(e: ImportEntry): string {
  if (e.kind === 'symlink') return '120000';
  if (e.kind === 'dir') return '160000';
  return e.mode === 0o755 ? '100755' : '100644';
}

/** Quotes a name for display when it has control characters or leading/trailing spaces. */
function displayName(p: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\x00-\x1f\x7f"]|^\s|\s$/.test(p) ? JSON.stringify(p) : p;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/**
 * The `--dry-run` listing: one line per entry, `<git mode> <size> <path>` (symlinks show their target,
 * submodules are marked), sorted by path, then a total line.
 */
export function formatDryRun(entries: readonly ImportEntry[]): string {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const width = Math.max(1, ...sorted.map((e) => String(e.size).length));
  const lines = sorted.map((e) => {
    let line = `${gitMode(e)} ${String(e.size).padStart(width)} ${displayName(e.path)}`;
    if (e.kind === 'symlink') line += ` -> ${displayName(e.linkTarget ?? '')}`;
    if (e.kind === 'dir') line += ' (submodule, contents not imported)';
    if (e.untracked) line += ' (untracked)';
    return line;
  });
  const files = sorted.filter((e) => e.kind !== 'dir').length;
  const total = sorted.reduce((n, e) => n + e.size, 0);
  lines.push(`${files} ${files === 1 ? 'entry' : 'entries'}, ${formatBytes(total)} (${total} bytes)`);
  return lines.join('\n');
}
