import { mkdir, mkdtemp, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import type { CommandRunner } from '../../../shared/command.js';
import { gitEnv as hostGitEnv } from '../../../shared/workspace-files.js';

/**
 * The manifest of an import: what it left in the guest, per path git's mode and object id (the
 * `git ls-files -s` of the imported state), and the tree id of that state. A re-sync diffs the host's
 * state now against it and sends only what changed (resync.ts).
 *
 * The host computes a manifest with a throwaway index (a copy of the checkout's, so git re-hashes only
 * files whose stat data changed) and a throwaway object directory (new blobs never land in the user's
 * repository). The guest builds the same tree from the files it received (the import base); when the
 * two tree ids differ (a file changed while it was read, a clean filter, a nested repository) the
 * manifest is not kept and the next prepare is a full import.
 */

/** One path of a manifest: `${mode} ${oid}` (mode as git prints it: 100644, 100755, 120000, 160000). */
export type ManifestEntries = Map<string, string>;

export interface Manifest {
  /** Tree id of the imported state (the import base commit's tree in the guest). */
  tree: string;
  entries: ManifestEntries;
}

/** What a manifest file records besides the entries: the import it belongs to. */
export interface ManifestHeader {
  guestPath: string;
  sourcePath: string;
  includeUntracked: boolean;
  headCommit: string | null;
  /** The guest's import base commit of that import. */
  baseCommit: string;
  tree: string;
}

export interface ManifestDiff {
  /** Paths to write (new, or content, mode or type changed), sorted. */
  write: string[];
  /** Paths that are gone, sorted. */
  delete: string[];
}

/** Paths of `to` that differ from `from` or are new, and paths of `from` not in `to`. */
export function diffManifests(from: ManifestEntries, to: ManifestEntries): ManifestDiff {
  const write: string[] = [];
  const del: string[] = [];
  for (const [path, v] of to) if (from.get(path) !== v) write.push(path);
  for (const path of from.keys()) if (!to.has(path)) del.push(path);
  return { write: write.sort(), delete: del.sort() };
}

/** Parses `git ls-files -s -z` output (`mode oid stage\tpath\0`). */
export function parseLsFilesStage(out: string): ManifestEntries {
  const m: ManifestEntries = new Map();
  for (const rec of out.split('\0')) {
    if (rec === '') continue;
    const tab = rec.indexOf('\t');
    const [mode, oid] = rec.slice(0, tab).split(' ');
    if (tab < 0 || !mode || !oid) throw new Error(`unexpected git ls-files record ${JSON.stringify(rec)}`);
    m.set(rec.slice(tab + 1), `${mode} ${oid}`);
  }
  return m;
}

function gitEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  return { ...hostGitEnv(), ...extra };
}

/**
 * The host checkout's state as an import would leave it in the guest: tracked files as they are in
 * the working tree (deleted ones gone), plus untracked, not ignored files with includeUntracked.
 * Null when git cannot compute it (then the caller imports in full).
 */
export async function hostManifest(
  root: string,
  includeUntracked: boolean,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<Manifest | null> {
  const tmp = await mkdtemp(join(tmpdir(), 'banger-manifest-'));
  try {
    const base = gitEnv({});
    delete base.GIT_INDEX_FILE;
    delete base.GIT_OBJECT_DIRECTORY;
    const paths = await run('git', ['rev-parse', '--git-path', 'index', '--git-path', 'objects'], {
      cwd: root,
      env: base,
      signal,
      allowFailure: true,
    });
    if (paths.code !== 0) return null;
    const [index, objects] = paths.stdout.trim().split('\n').map((p) => (isAbsolute(p) ? p : join(root, p)));
    if (!index || !objects) return null;
    const tmpIndex = join(tmp, 'index');
    await copyFile(index, tmpIndex).catch(() => undefined);
    await mkdir(join(tmp, 'objects'));
    const env = gitEnv({
      GIT_INDEX_FILE: tmpIndex,
      GIT_OBJECT_DIRECTORY: join(tmp, 'objects'),
      GIT_ALTERNATE_OBJECT_DIRECTORIES: objects,
    });
    const opts = { cwd: root, env, signal, allowFailure: true, maxOutputBytes: 256 << 20 };
    const add = await run('git', ['add', includeUntracked ? '-A' : '-u', '--', ':/'], opts);
    if (add.code !== 0) return null;
    const tree = await run('git', ['write-tree'], opts);
    const ls = await run('git', ['ls-files', '-s', '-z'], opts);
    if (tree.code !== 0 || ls.code !== 0 || ls.truncated?.stdout) return null;
    return { tree: tree.stdout.trim(), entries: parseLsFilesStage(ls.stdout) };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The manifest file of a VM's workspace: one JSON header line, then `mode oid\tpath\0` records. */
export function manifestPath(vmDir: string): string {
  return join(vmDir, 'workspace-manifest');
}

export async function writeManifest(file: string, header: ManifestHeader, entries: ManifestEntries): Promise<void> {
  const parts = [`${JSON.stringify(header)}\n`];
  for (const [path, v] of entries) parts.push(`${v}\t${path}\0`);
  const tmp = `${file}.tmp`;
  await writeFile(tmp, parts.join(''));
  await rename(tmp, file);
}

/** The manifest recorded for the workspace, or null when there is none or it is unreadable. */
export async function readManifest(file: string): Promise<{ header: ManifestHeader; entries: ManifestEntries } | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return null;
  }
  const nl = text.indexOf('\n');
  if (nl < 0) return null;
  try {
    const header = JSON.parse(text.slice(0, nl)) as ManifestHeader;
    const entries: ManifestEntries = new Map();
    for (const rec of text.slice(nl + 1).split('\0')) {
      if (rec === '') continue;
      const tab = rec.indexOf('\t');
      if (tab < 0) return null;
      entries.set(rec.slice(tab + 1), rec.slice(0, tab));
    }
    return { header, entries };
  } catch {
    return null;
  }
}

export async function removeManifest(file: string): Promise<void> {
  await rm(file, { force: true });
}
