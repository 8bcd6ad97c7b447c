import { mkdtemp, open, realpath, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar, { type Header as TarHeader, type Pack } from 'tar-stream';
import { BangerError, ErrorCode, toBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { runCommand } from '../../../shared/command.js';
import { assertNoPathThroughSymlink, validateEntryPath, type ImportEntry } from './host-repo.js';
import { changed, openEntry, readExactly } from './worktree-read.js';
import { shallowCommits } from './history-pack.js';

/**
 * Layout of the import tar. Workspace files live under TREE_DIR, banger's own data under META_DIR,
 * so no file of the user's can collide with it.
 */
export const TAR_TREE_DIR = 'tree';
export const TAR_META_DIR = 'meta';
/** A git pack (`git pack-objects` output) of the history the guest gets. */
export const TAR_HISTORY_PACK = `${TAR_META_DIR}/history.pack`;
/** Commits whose parents are not in the pack, one hex id a line: becomes the guest's `.git/shallow`. */
export const TAR_SHALLOW = `${TAR_META_DIR}/shallow`;
/** Re-sync only: the paths to delete in the workspace, each followed by a NUL. */
export const TAR_DELETED = `${TAR_META_DIR}/deleted`;
/**
 * Re-sync only: the files and symlinks of `entries`, each followed by a NUL (sent under TREE_DIR, or
 * gone from the checkout since it was listed): what the guest removes before copying the tree in, and
 * updates its import base's index for, without listing the tree itself.
 */
export const TAR_WRITTEN = `${TAR_META_DIR}/written`;

export interface ImportTarSource {
  /** Top-level directory of the host checkout. */
  root: string;
  /** From listImportFiles. */
  entries: readonly ImportEntry[];
  /** HEAD's commit; null for a repository without commits (no history is sent). */
  headCommit: string | null;
  /**
   * How many commits of history the guest gets (the newest, in `git rev-list` order); 0: all of
   * HEAD's history. Default DEFAULT_HISTORY_DEPTH.
   */
  historyDepth?: number;
  /**
   * Re-sync: the guest has this commit (and what it needs); only commits after it are sent, as a thin
   * pack (`git index-pack --fix-thin`), and no shallow list. Equal to headCommit: no history is sent.
   */
  historySince?: string;
  /** Re-sync: paths the guest deletes, sent as TAR_DELETED. */
  deleted?: readonly string[];
}

export interface ImportTarProgress {
  files: number;
  bytes: number;
  /** The last event of a full import's stream (import-stream.ts): `bytes` is all it sent. */
  final?: boolean;
}

export interface ImportTarOptions {
  onProgress?: (p: ImportTarProgress) => void;
  signal?: AbortSignal;
  /** Runs host git; defaults to runCommand. */
  run?: CommandRunner;
  /** Called for each listed path that is now a FIFO, socket or device: it is not read and not sent. */
  onSkipped?: (path: string) => void;
}

/**
 * Commits of history an import sends by default. Measured on a 3000-commit, 2000-file repo (8 MB
 * tree): full history is a 22 MB pack (0.4 s to pack, 0.9 s for `git index-pack` in the guest); the
 * last 50 commits are 2.6 MB (0.03 s, 0.07 s), barely more than the tree itself. 50 commits give
 * `git log`/`git blame` useful recent context while the cost stays independent of the repo's age.
 */
export const DEFAULT_HISTORY_DEPTH = 50;

/** Files up to this size are read whole, so their tar header and content always agree. */
const SMALL_FILE = 1 << 20;
const CHUNK = 1 << 16;

/**
 * Streams ONE tar for an import: the working-tree entries (read in place, no temporary copy) under
 * `tree/`, then the git history under `meta/`.
 *
 * History: `git rev-list --objects HEAD [--max-count=N] | git pack-objects` written to a temporary
 * file (a tar header needs the size up front), started before the files are streamed so both run at
 * once. A pack of HEAD's objects is what a clone transfers; the guest indexes it with
 * `git index-pack` and points its branch at HEAD. A `git bundle` would add nothing but a header, and
 * cannot be cut to a depth: a bundle of the last N commits lists the older commits as prerequisites
 * the guest does not have. With a depth, the commits whose parents are cut off are written to
 * `meta/shallow`, which becomes `.git/shallow`, exactly what `git clone --depth` produces.
 *
 * Every name is validated again here (no absolute names, no "..", no path through a symlink entry).
 *
 * Nothing outside the checkout is read, and nothing blocks, whatever happens to the working tree
 * after it was listed: each path is read as it is now, the way git would see it (openEntry). A path
 * below a directory that became a symlink, or that is gone, is left out (the guest sees it deleted);
 * one that became a symlink is sent as a symlink; a FIFO, socket or device is never read (onSkipped).
 * Header size, mode and content all come from the one file descriptor that is read; a file that
 * shrinks while it is read fails the stream with a clear error.
 */
export function createImportTar(source: ImportTarSource, opts: ImportTarOptions = {}): Readable {
  for (const e of source.entries) validateEntryPath(e.path);
  assertNoPathThroughSymlink(source.entries);

  const pack = tar.pack();
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort();
  if (opts.signal?.aborted) abort.abort();
  else opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  let tmp: string | null = null;

  const produce = async () => {
    const run = opts.run ?? runCommand;
    let history: Promise<HistoryPack> | null = null;
    if (source.headCommit !== null && source.historySince !== source.headCommit) {
      tmp = await mkdtemp(join(tmpdir(), 'banger-import-'));
      history = buildHistoryPack(
        source.root,
        source.headCommit,
        source.historySince ?? null,
        source.historyDepth ?? DEFAULT_HISTORY_DEPTH,
        tmp,
        run,
        abort.signal,
      );
      // Awaited below; this keeps a failure while files are still streaming from being "unhandled".
      history.catch(() => undefined);
    }
    const progress = { files: 0, bytes: 0 };
    const mtime = new Date();
    const realRoot = await realpath(source.root);
    const dirs = new Map<string, Promise<boolean>>();
    await addBuffer(pack, { name: `${TAR_TREE_DIR}/`, type: 'directory', mode: 0o755, mtime }, null);
    for (const e of source.entries) {
      if (abort.signal.aborted) throw new BangerError(ErrorCode.Cancelled, 'import cancelled');
      const name = `${TAR_TREE_DIR}/${e.path}`;
      const abs = join(source.root, e.path);
      if (e.kind === 'dir') {
        await addBuffer(pack, { name: `${name}/`, type: 'directory', mode: 0o755, mtime }, null);
      } else {
        const found = await openEntry(source.root, realRoot, e.path, dirs);
        if (found.kind === 'gone') continue;
        if (found.kind === 'special') {
          opts.onSkipped?.(e.path);
          continue;
        }
        if (found.kind === 'symlink') {
          await addBuffer(pack, { name, type: 'symlink', linkname: found.target, mode: 0o777, mtime }, null);
        } else {
          const { fh, size } = found;
          try {
            const header = { name, type: 'file' as const, mode: found.mode, mtime: found.mtime, size };
            if (size <= SMALL_FILE) await addBuffer(pack, header, await readExactly(fh, size, abs));
            else await addFile(pack, header, fh, abs, abort.signal);
          } finally {
            await fh.close();
          }
          progress.bytes += size;
        }
      }
      progress.files++;
      opts.onProgress?.({ ...progress });
    }
    if (history !== null || source.deleted !== undefined)
      await addBuffer(pack, { name: `${TAR_META_DIR}/`, type: 'directory', mode: 0o755, mtime }, null);
    if (source.deleted !== undefined) {
      for (const p of source.deleted) validateEntryPath(p);
      const list = Buffer.from(source.deleted.map((p) => `${p}\0`).join(''));
      await addBuffer(pack, { name: TAR_DELETED, type: 'file', mode: 0o644, mtime }, list);
      const written = source.entries.filter((e) => e.kind !== 'dir').map((e) => `${e.path}\0`);
      await addBuffer(pack, { name: TAR_WRITTEN, type: 'file', mode: 0o644, mtime }, Buffer.from(written.join('')));
    }
    if (history !== null) {
      const h = await history;
      await addBuffer(
        pack,
        { name: TAR_SHALLOW, type: 'file', mode: 0o644, mtime },
        Buffer.from(h.shallow.map((c) => `${c}\n`).join('')),
      );
      const fh = await open(h.path, 'r');
      try {
        await addFile(
          pack,
          { name: TAR_HISTORY_PACK, type: 'file', mode: 0o644, mtime, size: h.size },
          fh,
          h.path,
          abort.signal,
        );
      } finally {
        await fh.close();
      }
    }
  };

  const cleanup = async () => {
    opts.signal?.removeEventListener('abort', onOuterAbort);
    if (tmp !== null) await rm(tmp, { recursive: true, force: true });
  };

  void produce().then(
    async () => {
      await cleanup();
      pack.finalize();
    },
    async (err: unknown) => {
      abort.abort();
      await cleanup().catch(() => undefined);
      pack.destroy(
        opts.signal?.aborted ? new BangerError(ErrorCode.Cancelled, 'import cancelled') : toBangerError(err),
      );
    },
  );

  const out = Readable.from(coalesce(pack as AsyncIterable<Buffer>, BATCH), { objectMode: false });
  out.once('close', () => {
    // The consumer went away: stop git and the file reads, and fail the entry being written so
    // produce() ends and removes the temporary history pack.
    if (out.readableEnded) return;
    abort.abort();
    pack.destroy(new BangerError(ErrorCode.Cancelled, 'import cancelled'));
  });
  return out;
}

const ignore = () => undefined;

/**
 * Bytes the tar stream hands on at a time. tar-stream emits each header, each small file and each
 * padding as its own chunk, and every chunk written to the SSH channel becomes at least one SSH
 * packet the guest's sshd decrypts separately: batching keeps packets full (like tar's 10 KiB
 * records piped into ssh), which matters for trees of many small files.
 */
const BATCH = 1 << 16;

/** Re-chunks a byte stream into chunks of at least `min` bytes (the last one may be shorter). */
async function* coalesce(src: AsyncIterable<Buffer>, min: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const c of src) {
    parts.push(c);
    n += c.length;
    if (n >= min) {
      yield parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
}

type Header = Partial<TarHeader> & { name: string };


/** Adds an entry with its whole content (or none), resolving once tar-stream has taken it (backpressure). */
function addBuffer(pack: Pack, header: Header, content: Buffer | null): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const cb = (err?: Error | null) => (err ? reject(err) : resolve());
    // Errors reach us through cb; without a listener streamx would also throw them as uncaught.
    if (content === null) pack.entry(header, cb).on('error', ignore).end(null);
    else pack.entry(header, content, cb).on('error', ignore);
  });
}

/** Streams exactly header.size bytes of an open file into a tar entry. */
async function addFile(pack: Pack, header: Header, fh: FileHandle, abs: string, signal: AbortSignal): Promise<void> {
  const size = header.size ?? 0;
  let sink!: ReturnType<Pack['entry']>;
  const done = new Promise<void>((res, rej) => {
    sink = pack.entry(header, (err?: Error | null) => (err ? rej(err) : res()));
  });
  sink.on('error', ignore);
  done.catch(() => undefined);
  let written = 0;
  try {
    while (written < size) {
      if (signal.aborted) throw new BangerError(ErrorCode.Cancelled, 'import cancelled');
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - written));
      const { bytesRead } = await fh.read(buf, 0, buf.length, written);
      if (bytesRead === 0) throw changed(abs);
      written += bytesRead;
      if (!sink.write(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead))) await drained(sink, signal);
    }
  } catch (err) {
    sink.destroy(err as Error);
    throw signal.aborted || err instanceof BangerError ? err : changed(abs, err);
  }
  sink.end(null);
  await done;
}

/** Resolves when a tar entry can take more data; rejects when it is destroyed or the import is aborted. */
function drained(sink: ReturnType<Pack['entry']>, signal: AbortSignal): Promise<void> {
  return new Promise<void>((res, rej) => {
    const done = (err?: Error) => {
      sink.off('drain', onDrain);
      sink.off('close', onClose);
      signal.removeEventListener('abort', onClose);
      if (err) rej(err);
      else res();
    };
    const onDrain = () => done();
    const onClose = () => done(new BangerError(ErrorCode.Cancelled, 'import cancelled'));
    if (signal.aborted || sink.destroyed) return onClose();
    sink.once('drain', onDrain);
    sink.once('close', onClose);
    signal.addEventListener('abort', onClose, { once: true });
  });
}

interface HistoryPack {
  path: string;
  size: number;
  shallow: string[];
}

/**
 * Writes a pack of HEAD's history (all of it, or `depth` commits) to `dir`; with `since`, a thin pack
 * of the commits after it (the guest has `since`), without a shallow list.
 */
async function buildHistoryPack(
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
