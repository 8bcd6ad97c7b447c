import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { gitEnv } from '../../../shared/workspace-files.js';
import { NEWLINE, runRecords } from '../../../shared/records.js';

/**
 * Git packs an import sends, written by the host's git and handed on as git finishes each.
 *
 * Each pack goes with the index `git pack-objects` wrote for it: the guest moves both into its object
 * store as they are and hashes nothing (in an emulated guest, SHA-1 of a 200 MB pack takes longer than
 * receiving it). `--window=0`: no search for new deltas. Objects already stored as deltas in the
 * repository's packs stay deltas when their base is in the same pack; loose objects, the newest, go whole.
 * The search costs tens of seconds for a tree of 20,000 new files and saves little: a tree's files are
 * rarely deltas of each other.
 */

/** A finished pack and its index. */
export interface PackFile {
  /** The pack's checksum, its name: `pack-<id>.pack` in the guest. */
  id: string;
  pack: { path: string; size: number };
  idx: { path: string; size: number };
}

/**
 * Largest part of a split pack. The guest checks a part's files out only once all of it has arrived, so
 * small parts let the writing of files (the guest's largest cost for a tree of many small files) start
 * within a second or two and follow the transfer closely; each part costs a git process on the host and
 * five processes in the guest (tens of milliseconds of a vCPU each under emulation, while the import keeps
 * both busy). Measured here, alternating runs: 16 MiB against 8 MiB took a 20,000-file / 198 MiB import from
 * 27.3 s to 23.3 s and a 4,000-file / 40 MiB one from 7.4 s to 7.1 s (medians); 32 MiB gained nothing more.
 */
export const PACK_PART_BYTES = 16 << 20;

/**
 * Largest first part: the guest starts checking files out once the first part is in, so the first is small
 * (the smallest blobs, so still many files) and arrives within a fraction of a second; the next ones are
 * PACK_PART_BYTES and arrive while its files are written. 1 MiB against 4 MiB, alternated 7 times on one VM: a
 * 4,000-file import took 3.12 s against 3.27 s (medians); its first part still holds ~700 files.
 */
export const FIRST_PART_BYTES = 1 << 20;

const HEX_ID = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

/** How often the pack directory is looked at for parts git has finished. */
const POLL_MS = 100;

/**
 * Writes to `file` the git index of HEAD's tree (`git read-tree`), in a form any git reads (version 2, whole,
 * with its checksum): the guest checks files out into it without reading HEAD's trees first.
 */
export async function headIndex(root: string, head: string, file: string, run: CommandRunner, signal: AbortSignal): Promise<void> {
  const config = ['index.version=2', 'core.splitIndex=false', 'index.skipHash=false', 'index.sparse=false'];
  await run('git', [...config.flatMap((c) => ['-c', c]), 'read-tree', `${head}^{tree}`], {
    cwd: root,
    env: { ...gitEnv(), GIT_INDEX_FILE: file },
    signal,
  });
}

/**
 * The objects of HEAD's history (all of it with depth 0, else its `depth` newest commits) for which
 * `keep` holds, and the commits whose parents are not sent (the guest's `.git/shallow`). The listing
 * is read as git prints it: HEAD's tree alone is a line per file.
 */
export async function historyObjects(
  root: string,
  head: string,
  depth: number,
  keep: (id: string) => boolean,
  run: CommandRunner,
  signal: AbortSignal,
): Promise<{ objects: string[]; shallow: string[] }> {
  const limit = depth > 0 ? [`--max-count=${depth}`] : [];
  const shallow = await shallowCommits(root, head, depth, run, signal);
  const objects: string[] = [];
  const onLine = (buf: Buffer, start: number, end: number) => {
    const sp = buf.indexOf(0x20, start);
    const id = buf.toString('latin1', start, sp === -1 || sp > end ? end : sp);
    if (keep(id)) objects.push(id);
  };
  await runRecords(run, 'git', ['rev-list', '--objects', ...limit, head], NEWLINE, onLine, {
    cwd: root,
    env: gitEnv(),
    signal,
  });
  return { objects, shallow };
}

/** The commits of HEAD's `depth` newest (0: all, none shallow) with a parent that is not among them. */
export async function shallowCommits(
  root: string,
  head: string,
  depth: number,
  run: CommandRunner,
  signal: AbortSignal,
): Promise<string[]> {
  if (depth <= 0) return [];
  const r = await run('git', ['rev-list', '--parents', `--max-count=${depth}`, head], {
    cwd: root,
    env: gitEnv(),
    signal,
    maxOutputBytes: 1 << 30,
  });
  const rows = r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' '));
  const sent = new Set(rows.map((row) => row[0]));
  return rows.filter((row) => row.slice(1).some((p) => !sent.has(p))).map((row) => row[0] as string);
}

/**
 * Packs `objects` into `dir` as `<prefix>-<id>.pack` with its index, in parts of at most `partBytes`
 * (none: one pack), each yielded as soon as git has written it while git goes on with the next.
 * `stored`: no compression (see FullImportSource.storeBlobs).
 */
export async function* packObjects(
  root: string,
  objects: Iterable<string>,
  dir: string,
  prefix: string,
  o: { partBytes?: number; stored?: boolean },
  run: CommandRunner,
  signal: AbortSignal,
): AsyncGenerator<PackFile> {
  const list = join(dir, `${prefix}.objects`);
  await writeFile(list, lines(objects));
  const args = o.partBytes === undefined ? [] : [`--max-pack-size=${o.partBytes}`];
  // Stored: zlib level 0, also for objects the repository keeps compressed (no reuse of their data).
  const env = o.stored
    ? { ...gitEnv(), GIT_CONFIG_COUNT: '1', GIT_CONFIG_KEY_0: 'pack.compression', GIT_CONFIG_VALUE_0: '0' }
    : gitEnv();
  if (o.stored) args.push('--no-reuse-object');
  const packing = run(
    'sh',
    ['-c', 'exec git pack-objects -q --window=0 "$@" < "$0"', list, ...args, join(dir, prefix)],
    { cwd: root, env, signal },
  );
  packing.catch(() => undefined);
  yield* finishedPacks(dir, prefix, packing, signal);
}

/** `ids`, one a line, in pieces of about 64 KiB (all of HEAD's blobs are megabytes of ids). */
function* lines(ids: Iterable<string>): Generator<string> {
  let piece = '';
  for (const id of ids) {
    piece += `${id}\n`;
    if (piece.length >= 1 << 16) {
      yield piece;
      piece = '';
    }
  }
  yield piece;
}

/**
 * The packs `<prefix>-<id>.pack` that git finished in `dir`, in the order they appear, until `done`
 * settles. git renames a part's index into place last, so an index means its pack is complete.
 */
async function* finishedPacks(
  dir: string,
  prefix: string,
  done: Promise<unknown>,
  signal: AbortSignal,
): AsyncGenerator<PackFile> {
  const seen = new Set<string>();
  let finished = false;
  void done.then(
    () => (finished = true),
    () => (finished = true),
  );
  for (;;) {
    const last = finished;
    if (last) await done; // a failure of git is thrown here
    const found: { id: string; at: number }[] = [];
    for (const n of await readdir(dir)) {
      if (!n.startsWith(`${prefix}-`) || !n.endsWith('.idx')) continue;
      const id = n.slice(prefix.length + 1, -'.idx'.length);
      if (seen.has(id)) continue;
      if (!HEX_ID.test(id))
        throw new BangerError(ErrorCode.Internal, `git wrote an unexpected pack ${JSON.stringify(n)}`);
      found.push({ id, at: (await stat(join(dir, n))).mtimeMs });
    }
    for (const { id } of found.sort((a, b) => a.at - b.at)) {
      seen.add(id);
      const pack = join(dir, `${prefix}-${id}.pack`);
      const idx = join(dir, `${prefix}-${id}.idx`);
      const [p, i] = await Promise.all([stat(pack), stat(idx)]);
      yield { id, pack: { path: pack, size: p.size }, idx: { path: idx, size: i.size } };
    }
    if (last) return;
    await Promise.race([sleep(POLL_MS, undefined, { signal }), done.catch(() => undefined)]);
  }
}

/** The object ids a pack holds, read from its version 2 index (`hashBytes`: 20 for SHA-1, 32 for SHA-256). */
export async function packIndexIds(idxPath: string, hashBytes: number): Promise<string[]> {
  const b = await readFile(idxPath);
  if (b.length < 8 + 1024 || b.readUInt32BE(0) !== 0xff744f63 || b.readUInt32BE(4) !== 2)
    throw new BangerError(ErrorCode.Internal, `${idxPath} is not a version 2 pack index`);
  const n = b.readUInt32BE(8 + 255 * 4);
  const start = 8 + 1024;
  if (b.length < start + n * hashBytes) throw new BangerError(ErrorCode.Internal, `${idxPath} is truncated`);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(b.toString('hex', start + i * hashBytes, start + (i + 1) * hashBytes));
  return ids;
}

export interface HistoryPack {
  path: string;
  size: number;
  shallow: string[];
}

/**
 * Writes a pack of HEAD's history (all of it, or `depth` commits) to `dir`; with `since`, a thin pack
 * of the commits after it (the guest has `since`), without a shallow list.
 */
export async function buildHistoryPack(
  root: string,
  head: string,
  since: string | null,
  depth: number,
  dir: string,
  run: CommandRunner,
  signal: AbortSignal,
): Promise<HistoryPack> {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_OPTIONAL_LOCKS: '0' };
  delete env.GIT_DIR;
  delete env.GIT_WORK_TREE;
  delete env.GIT_INDEX_FILE;
  const list = join(dir, 'objects');
  const path = join(dir, 'history.pack');
  if (since !== null) {
    await run(
      'sh',
      ['-c', 'printf "%s\\n^%s\\n" "$2" "$3" | git pack-objects -q --revs --thin --stdout > "$1"', 'sh', path, head, since],
      { cwd: root, env, signal },
    );
    return { path, size: (await stat(path)).size, shallow: [] };
  }
  const limit = depth > 0 ? [`--max-count=${depth}`] : [];
  const shallow = await shallowCommits(root, head, depth, run, signal);
  await run(
    'sh',
    [
      '-c',
      'set -e; list=$1; out=$2; shift 2; git rev-list --objects "$@" > "$list"; git pack-objects -q --stdout < "$list" > "$out"',
      'sh',
      list,
      path,
      ...limit,
      head,
    ],
    { cwd: root, env, signal },
  );
  const { size } = await stat(path);
  return { path, size, shallow };
}
