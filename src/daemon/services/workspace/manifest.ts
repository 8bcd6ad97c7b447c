import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { isAbsolute, join } from 'node:path';
import type { CommandRunner, RunOptions } from '../../../shared/command.js';
import { gitEnv as hostGitEnv, untrackedRepositories, type GitIdentity } from '../../../shared/workspace-files.js';
import { NUL, recordSplitter, runRecords, text, type RecordHandler } from '../../../shared/records.js';

/**
 * The manifest of an import: what it left in the guest, per path git's mode and object id (the
 * `git ls-files -s` of the imported state), and the tree id of that state. A re-sync diffs the host's
 * state now against it and sends only what changed (resync.ts).
 *
 * The host computes a manifest with a throwaway index (a copy of the checkout's, so git re-hashes only
 * files whose stat data changed) and a throwaway object directory (new blobs never land in the user's
 * repository). The guest builds the same tree from the files it received (the import base); when the
 * two tree ids differ (a file changed while it was read, a clean filter) the
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
  /** The git identity that import set in the guest repository (absent in manifests of older builds). */
  identity?: GitIdentity;
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
  const split = recordSplitter(NUL, stageRecord(m));
  split.push(Buffer.from(out));
  split.end();
  return m;
}

/**
 * Adds each `git ls-files -s -z` record to `m`: path -> `mode oid`, each a string of its own (one
 * sliced out of the record would keep the whole record, or the whole listing, alive).
 */
export function stageRecord(m: { set(path: string, value: string): void }): RecordHandler {
  return (buf, start, end) => {
    const tab = buf.indexOf(TAB, start);
    const space = buf.indexOf(SPACE, start);
    const oidEnd = space === -1 ? -1 : buf.indexOf(SPACE, space + 1);
    if (tab === -1 || tab >= end || space <= start || oidEnd === -1 || oidEnd <= space + 1 || oidEnd > tab)
      throw new Error(`unexpected git ls-files record ${JSON.stringify(text(buf, start, end))}`);
    m.set(text(buf, tab + 1, end), buf.toString('latin1', start, oidEnd));
  };
}

const TAB = 0x09;
const SPACE = 0x20;

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
  tmpDir: string,
  signal?: AbortSignal,
): Promise<Manifest | null> {
  let untracked: readonly string[] | null = null;
  if (includeUntracked) {
    untracked = await untrackedRepositories(root, run, signal).catch(() => null);
    if (untracked === null) return null;
  }
  return withStateIndex(root, untracked, run, signal, tmpDir, async (tree, opts) => {
    const entries: ManifestEntries = new Map();
    const ls = await runRecords(run, 'git', ['ls-files', '-s', '-z'], NUL, stageRecord(entries), {
      ...opts,
      maxBytes: LISTING_MAX_BYTES,
    });
    return ls.code !== 0 || ls.truncated?.stdout ? null : { tree, entries };
  });
}

/** A manifest listing longer than this is not read (the import is then a full one without a manifest). */
export const LISTING_MAX_BYTES = 256 << 20;

/**
 * Runs `use` on the host checkout's state (see hostManifest) in a throwaway index: its tree id, and
 * options for git commands that read that index. Null when git cannot compute it.
 */
export async function withStateIndex<T>(
  root: string,
  /**
   * Null: tracked files only. Else untracked files too, but not these untracked nested repositories
   * (untrackedRepositories), which the import leaves out: `git add -A` would stage each as a gitlink (the state
   * would then never match the guest's), or fail on one with no commit.
   */
  untracked: readonly string[] | null,
  run: CommandRunner,
  signal: AbortSignal | undefined,
  /** Where its scratch directory goes (the daemon's `Paths.tmpDir`). */
  tmpDir: string,
  use: (tree: string, opts: RunOptions & { cwd: string; env: NodeJS.ProcessEnv }) => Promise<T | null>,
): Promise<T | null> {
  const tmp = await mkdtemp(join(tmpDir, 'banger-manifest-'));
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
    const opts = { cwd: root, env, signal, allowFailure: true };
    const excluded = (untracked ?? []).map((p) => `:(exclude,literal)${p}`);
    const add = await run('git', ['add', untracked ? '-A' : '-u', '--', ':/', ...excluded], opts);
    if (add.code !== 0) return null;
    const tree = await run('git', ['write-tree'], opts);
    if (tree.code !== 0) return null;
    return await use(tree.stdout.trim(), opts);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The manifest file of a VM's workspace: one JSON header line, then `mode oid\tpath\0` records. */
export function manifestPath(vmDir: string): string {
  return join(vmDir, 'workspace-manifest');
}

/**
 * A manifest to record: its entries in memory, or (a full import's, full-import.ts) in a file of the
 * manifest file's records, so 100,000 entries need not stay in memory while the import runs.
 */
export interface PendingManifest {
  tree: string;
  entries: ManifestEntries | { file: string };
}

export async function writeManifest(file: string, header: ManifestHeader, entries: PendingManifest['entries']): Promise<void> {
  const tmp = `${file}.tmp`;
  if (entries instanceof Map) await writeFile(tmp, records(entries, `${JSON.stringify(header)}\n`));
  else {
    await writeFile(tmp, `${JSON.stringify(header)}\n`);
    await pipeline(createReadStream(entries.file), createWriteStream(tmp, { flags: 'a' }));
  }
  await rename(tmp, file);
}

/** A manifest's `mode oid\tpath\0` records in pieces of about 64 KiB (megabytes for a large checkout). */
function* records(entries: ManifestEntries, first = ''): Generator<string> {
  let piece = first;
  for (const [path, v] of entries) {
    piece += `${v}\t${path}\0`;
    if (piece.length >= 1 << 16) {
      yield piece;
      piece = '';
    }
  }
  yield piece;
}

/** The manifest recorded for the workspace, or null when there is none or it is unreadable. */
export async function readManifest(file: string): Promise<{ header: ManifestHeader; entries: ManifestEntries } | null> {
  let buf: Buffer;
  try {
    buf = await readFile(file);
  } catch {
    return null;
  }
  const nl = buf.indexOf(0x0a);
  if (nl < 0) return null;
  try {
    const header = JSON.parse(buf.toString('utf8', 0, nl)) as ManifestHeader;
    const entries: ManifestEntries = new Map();
    let bad = false;
    const split = recordSplitter(NUL, (b, start, end) => {
      const tab = b.indexOf(TAB, start);
      if (tab === -1 || tab >= end) bad = true;
      else entries.set(text(b, tab + 1, end), text(b, start, tab));
    });
    split.push(buf.subarray(nl + 1));
    split.end();
    return bad ? null : { header, entries };
  } catch {
    return null;
  }
}

export async function removeManifest(file: string): Promise<void> {
  await rm(file, { force: true });
}
