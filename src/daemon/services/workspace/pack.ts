import { mkdtemp, open, realpath, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar, { type Header as TarHeader, type Pack } from 'tar-stream';
import { BangerError, ErrorCode, toBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { runCommand } from '../../../shared/command.js';
import { assertNoPathThroughSymlink, validateEntryPath, type ImportEntry } from './host-repo.js';
import { changed, openEntry, readExactly } from './worktree-read.js';
import { buildHistoryPack, type HistoryPack } from './history-pack.js';
import { looseObject, type BaseObjects, type GitHash, type LooseObject } from './base-objects.js';
import type { ManifestEntries } from './manifest.js';

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
/** Re-sync only, an empty file: a written path may be a mise config (mayBeMiseConfig), so `mise trust` runs again. */
export const TAR_TRUST_MISE = `${TAR_META_DIR}/trust-mise`;
/** Re-sync only, when the host made the import base (base-objects.ts): `COMMIT TREE`, one line. */
export const TAR_BASE = `${TAR_META_DIR}/base`;
/** With TAR_BASE: the import base's index entries of the changed paths (`git update-index -z --index-info`). */
export const TAR_INDEX_INFO = `${TAR_META_DIR}/index-info`;
/** With TAR_BASE: loose objects (`xx/yyyy...`) for the guest's `.git/objects`. */
export const TAR_OBJECTS_DIR = `${TAR_META_DIR}/objects`;

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
  /** Where the history pack is written while it is sent (the daemon's `Paths.tmpDir`). */
  tmpDir: string;
  /** Re-sync: paths the guest deletes, sent as TAR_DELETED. */
  deleted?: readonly string[];
  /** Re-sync: send TAR_TRUST_MISE. */
  trustMise?: boolean;
  /**
   * Re-sync: the import base made on the host (`make`), sent after the files as TAR_BASE, TAR_INDEX_INFO and
   * TAR_OBJECTS_DIR (with the blobs of the files sent) only when every file and symlink sent hashes to what
   * `expect` (the host's manifest, of object format `hash`) says and they hold at most MAX_HOST_BASE_BYTES;
   * else the guest makes the base itself.
   */
  base?: { hash: GitHash; expect: ManifestEntries; make: () => BaseObjects | null };
  /**
   * Re-sync: the archive is unpacked in the workspace's `.git`, so the tree and meta/ go under this staging
   * directory (one path component) and the base's loose objects (TAR_OBJECTS_DIR) straight into `objects/`,
   * where git finds them: no copy in the guest. Objects are named by their hash: one that arrives for a
   * re-sync that is then refused is unreferenced, and `git gc` prunes it in time.
   */
  stageDir?: string;
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
/**
 * A re-sync sends the import base it made (ImportTarSource.base) when its files hold at most this much: their
 * blobs go along (compressed, held until the files are sent), so the guest has every object the base names.
 */
export const MAX_HOST_BASE_BYTES = 8 << 20;
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
  const arc: TarOut = { pack, at: placer(source.stageDir) };
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort();
  if (opts.signal?.aborted) abort.abort();
  else opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  let tmp: string | null = null;

  const produce = async () => {
    const run = opts.run ?? runCommand;
    let history: Promise<HistoryPack> | null = null;
    if (source.headCommit !== null && source.historySince !== source.headCommit) {
      tmp = await mkdtemp(join(source.tmpDir, 'banger-import-'));
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
    const dirs = new Map<string, boolean>();
    const base = source.base;
    // Whether what was sent is exactly the manifest's: only then is the host's base used, with these blobs.
    let baseOk = base !== undefined;
    const blobs: LooseObject[] = [];
    let blobBytes = 0;
    const expect = (path: string, mode: string, content: Buffer) => {
      blobBytes += content.length;
      if (!base || blobBytes > MAX_HOST_BASE_BYTES) return void (baseOk = false);
      const blob = looseObject(base.hash, 'blob', content);
      if (base.expect.get(path) !== `${mode} ${blob.oid}`) return void (baseOk = false);
      blobs.push(blob.object);
    };
    await addBuffer(arc, { name: `${TAR_TREE_DIR}/`, type: 'directory', mode: 0o755, mtime }, null);
    for (const e of source.entries) {
      if (abort.signal.aborted) throw new BangerError(ErrorCode.Cancelled, 'import cancelled');
      const name = `${TAR_TREE_DIR}/${e.path}`;
      const abs = join(source.root, e.path);
      if (e.kind === 'dir') {
        await addBuffer(arc, { name: `${name}/`, type: 'directory', mode: 0o755, mtime }, null);
      } else {
        const found = await openEntry(source.root, realRoot, e.path, dirs);
        if (found.kind === 'gone') {
          baseOk = false;
          continue;
        }
        if (found.kind === 'special') {
          baseOk = false;
          opts.onSkipped?.(e.path);
          continue;
        }
        if (found.kind === 'symlink') {
          await addBuffer(arc, { name, type: 'symlink', linkname: found.target, mode: 0o777, mtime }, null);
          if (baseOk) expect(e.path, '120000', Buffer.from(found.target));
        } else {
          const { fh, size } = found;
          try {
            const header = { name, type: 'file' as const, mode: found.mode, mtime: found.mtime, size };
            if (size <= SMALL_FILE) {
              const content = await readExactly(fh, size, abs);
              await addBuffer(arc, header, content);
              if (baseOk) expect(e.path, found.mode & 0o100 ? '100755' : '100644', content);
            } else {
              baseOk = false;
              await addFile(arc, header, fh, abs, abort.signal);
            }
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
      await addBuffer(arc, { name: `${TAR_META_DIR}/`, type: 'directory', mode: 0o755, mtime }, null);
    if (source.deleted !== undefined) {
      for (const p of source.deleted) validateEntryPath(p);
      const list = Buffer.from(source.deleted.map((p) => `${p}\0`).join(''));
      await addBuffer(arc, { name: TAR_DELETED, type: 'file', mode: 0o644, mtime }, list);
      const written = source.entries.filter((e) => e.kind !== 'dir').map((e) => `${e.path}\0`);
      await addBuffer(arc, { name: TAR_WRITTEN, type: 'file', mode: 0o644, mtime }, Buffer.from(written.join('')));
      if (source.trustMise) await addBuffer(arc, { name: TAR_TRUST_MISE, type: 'file', mode: 0o644, mtime }, Buffer.alloc(0));
      const made = baseOk ? base?.make() : null;
      if (made) await addBaseObjects(arc, { ...made, objects: [...blobs, ...made.objects] }, mtime);
    }
    if (history !== null) {
      const h = await history;
      await addBuffer(
        arc,
        { name: TAR_SHALLOW, type: 'file', mode: 0o644, mtime },
        Buffer.from(h.shallow.map((c) => `${c}\n`).join('')),
      );
      const fh = await open(h.path, 'r');
      try {
        await addFile(
          arc,
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


/** The archive being written, and where an entry named by this file's layout (the TAR_ names) goes in it. */
interface TarOut {
  pack: Pack;
  at: (name: string) => string;
}

/** ImportTarSource.stageDir: the tree and meta/ under the staging directory, the base's objects in `objects/`. */
function placer(stageDir: string | undefined): (name: string) => string {
  if (stageDir === undefined) return (name) => name;
  validateEntryPath(stageDir);
  const objects = `${TAR_OBJECTS_DIR}/`;
  return (name) => (name.startsWith(objects) ? `objects/${name.slice(objects.length)}` : `${stageDir}/${name}`);
}

/** Adds an entry with its whole content (or none), resolving once tar-stream has taken it (backpressure). */
function addBuffer(out: TarOut, header: Header, content: Buffer | null): Promise<void> {
  const h = { ...header, name: out.at(header.name) };
  return new Promise<void>((resolve, reject) => {
    const cb = (err?: Error | null) => (err ? reject(err) : resolve());
    // Errors reach us through cb; without a listener streamx would also throw them as uncaught.
    if (content === null) out.pack.entry(h, cb).on('error', ignore).end(null);
    else out.pack.entry(h, content, cb).on('error', ignore);
  });
}

/** The host-made import base's entries: its loose objects, the index entries, then TAR_BASE naming the commit. */
async function addBaseObjects(out: TarOut, b: BaseObjects, mtime: Date): Promise<void> {
  const dirs = new Set<string>();
  await addBuffer(out, { name: `${TAR_OBJECTS_DIR}/`, type: 'directory', mode: 0o755, mtime }, null);
  for (const o of b.objects) {
    const dir = o.path.slice(0, 2);
    if (!dirs.has(dir)) {
      dirs.add(dir);
      await addBuffer(out, { name: `${TAR_OBJECTS_DIR}/${dir}/`, type: 'directory', mode: 0o755, mtime }, null);
    }
    await addBuffer(out, { name: `${TAR_OBJECTS_DIR}/${o.path}`, type: 'file', mode: 0o444, mtime }, o.data);
  }
  await addBuffer(out, { name: TAR_INDEX_INFO, type: 'file', mode: 0o644, mtime }, b.indexInfo);
  await addBuffer(out, { name: TAR_BASE, type: 'file', mode: 0o644, mtime }, Buffer.from(`${b.commit} ${b.tree}\n`));
}

/** Streams exactly header.size bytes of an open file into a tar entry. */
async function addFile(out: TarOut, header: Header, fh: FileHandle, abs: string, signal: AbortSignal): Promise<void> {
  const size = header.size ?? 0;
  let sink!: ReturnType<Pack['entry']>;
  const done = new Promise<void>((res, rej) => {
    sink = out.pack.entry({ ...header, name: out.at(header.name) }, (err?: Error | null) => (err ? rej(err) : res()));
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
