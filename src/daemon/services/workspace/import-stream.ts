import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BangerError, ErrorCode, toBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { runCommand } from '../../../shared/command.js';
import type { CheckoutSplit } from './checkout-split.js';
import {
  FIRST_PART_BYTES,
  PACK_PART_BYTES,
  headIndex,
  historyObjects,
  packIndexIds,
  packObjects,
  type PackFile,
} from './history-pack.js';
import { assertNoPathThroughSymlink, validateEntryPath } from './host-repo.js';
import { asNoSpace, ensureFreeSpace, type FreeSpace } from '../vm/disks.js';
import { createImportTar, DEFAULT_HISTORY_DEPTH, type ImportTarOptions, type ImportTarProgress } from './pack.js';

/**
 * The stream a full import sends to the guest's import script (guest-scripts.ts buildImportScript).
 * Records, each a header line and then exactly the bytes the line announces:
 *
 *     banger-import 1
 *     options <stateIsHead> <trustMise>   each 0 or 1 (FullImportSource); optional, before any other record
 *     index <n>                           <n bytes: HEAD's git index, written by the host's git>
 *     part <id> <packBytes> <idxBytes> <listBytes>
 *                                         <pack><index><NUL-separated paths to check out of it>
 *     shallow <n>                         <n bytes: the guest's .git/shallow>
 *     pack <id> <packBytes> <idxBytes>    <pack><index>   history: commits, trees, older blobs
 *     part ...                            the other parts of HEAD's blobs
 *     tar                                 <a tar of tree/ to the end: the files sent as they are>
 *
 * Why not one tar: the guest acts on each record as it arrives. It moves each pack and its index (written
 * by the host's git, so nothing is hashed again) into its object store, and checks out the files of a
 * part in the background while the next part is still on its way, so writing 20,000 files overlaps the
 * transfer the way `tar | ssh tar -x` overlaps them. Each file's content travels once: in HEAD's blobs
 * when the file is HEAD's (checkout-split.ts), else in the tar.
 *
 * The host's git writes HEAD's index and the packs while earlier records are sent (history-pack.ts). The
 * index and a small first part (FIRST_PART_BYTES of the smallest blobs) come first, so the guest writes
 * files within a fraction of a second, with no tree of the history read; the history and the other parts
 * (PACK_PART_BYTES) arrive while it does. Before, the history came first and the guest read HEAD's index
 * from its trees, and the first file was written 1.5-2 s into a 4,000-file import.
 */
export const IMPORT_STREAM_MAGIC = 'banger-import 1';

export interface FullImportSource {
  /** Top-level directory of the host checkout. */
  root: string;
  /** HEAD's commit; null for a repository without commits (only the tar is sent). */
  headCommit: string | null;
  split: CheckoutSplit;
  /** Commits of history sent; 0: all. Default DEFAULT_HISTORY_DEPTH. */
  historyDepth?: number;
  /** Largest part of HEAD's blobs (tests make it small). */
  partBytes?: number;
  /** Largest first part (default FIRST_PART_BYTES; never more than partBytes). */
  firstPartBytes?: number;
  /**
   * Send HEAD's blobs uncompressed. For a guest under software emulation: it inflates zlib at ~12 MB/s
   * (measured: 85 MB of text took 6.8 s with `gzip -d`, 0.8 s to copy), about as fast as it receives
   * bytes over SSH, so compression costs it as much time as it saves on the wire even for source code
   * that compresses 3x, and more for data that does not compress. Under KVM, inflating is cheap and the
   * repository's compressed objects go as they are.
   */
  storeBlobs?: boolean;
  /** Where the packs are written while they are sent (the daemon's `Paths.tmpDir`). */
  tmpDir: string;
  /** Free space of a directory's filesystem (tests). */
  freeSpace?: FreeSpace;
  /**
   * The state imported is HEAD's tree exactly (full-import.ts FullImportPlan.stateIsHead): the guest's import
   * base index is then the checkout's, with no `git add -A` (a stat of every file and a read of every directory,
   * half a second for 4,000 files in an emulated guest). The host keeps a manifest only when the tree the guest
   * reports is its own, so a wrong answer costs the next prepare a full import, not correctness. Default false.
   */
  stateIsHead?: boolean;
  /**
   * Run `mise trust --all` in the workspace at the end (default true). It takes seconds in an emulated guest,
   * so the workspace service asks for it only when the tree may hold a mise config (resync-script.ts
   * mayBeMiseConfig).
   */
  trustMise?: boolean;
}

/** Host space kept free beyond HEAD's blobs while an import's packs are written (history, indexes). */
const PACK_SPACE_MARGIN = 64 << 20;

export function createFullImportStream(source: FullImportSource, opts: ImportTarOptions = {}): Readable {
  const { split } = source;
  for (const p of split.checkout) validateEntryPath(p);
  // No path may lead through another entry, whichever way either travels.
  assertNoPathThroughSymlink(split.send, split.checkout);
  const tmp = source.tmpDir;
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort();
  if (opts.signal?.aborted) abort.abort();
  else opts.signal?.addEventListener('abort', onOuterAbort, { once: true });

  // Files: those of the tar plus those of the parts sent; bytes: the tar's file contents plus all packs.
  let tar: ImportTarProgress = { files: 0, bytes: 0 };
  let packBytes = 0;
  let checkedOut = 0;
  const report = (final?: true) =>
    opts.onProgress?.({ files: tar.files + checkedOut, bytes: tar.bytes + packBytes, ...(final ? { final } : {}) });

  async function* records(): AsyncGenerator<Buffer> {
    try {
      yield Buffer.from(`${IMPORT_STREAM_MAGIC}\noptions ${source.stateIsHead ? 1 : 0} ${source.trustMise === false ? 0 : 1}\n`);
      if (source.headCommit !== null) yield* history(source.headCommit);
      yield Buffer.from('tar\n');
      const files = createImportTar(
        { root: source.root, entries: split.send, headCommit: null, tmpDir: tmp },
        {
          ...opts,
          signal: abort.signal,
          onProgress: (t) => {
            tar = t;
            report();
          },
        },
      );
      for await (const chunk of files) yield chunk as Buffer;
      report(true);
    } catch (e) {
      if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'import cancelled');
      throw toBangerError(asNoSpace(e, tmp, "write this import's packs"));
    }
  }

  async function* history(head: string): AsyncGenerator<Buffer> {
    const run: CommandRunner = opts.run ?? runCommand;
    // git may write every part before the guest has taken the first: HEAD's blobs at their full size when
    // stored, about half of it compressed (source code deflates 2-4x), and room for history.
    const need = (source.storeBlobs ? split.headBlobBytes : Math.ceil(split.headBlobBytes / 2)) + PACK_SPACE_MARGIN;
    await ensureFreeSpace(tmp, need, "write this import's packs", source.freeSpace);
    const dir = await mkdtemp(join(tmp, 'banger-import-'));
    const pending: Promise<unknown>[] = [];
    /** Starts `p` now; what it throws is thrown where it is awaited (and it is awaited before the end). */
    const early = <T>(p: Promise<T>): Promise<T> => {
      p.catch(() => undefined);
      pending.push(p);
      return p;
    };
    /** Starts git packing `packs` now (it begins at the first `next()`), to be sent later. */
    const packedMeanwhile = (packs: AsyncGenerator<PackFile>): AsyncIterable<PackFile> => {
      const head = early(packs.next());
      return {
        async *[Symbol.asyncIterator]() {
          for (let r = await head; !r.done; r = await packs.next()) yield r.value;
        },
      };
    };
    let finished = false;
    try {
      const hashBytes = head.length / 2;
      const blobs = split.headBlobs;
      const partBytes = source.partBytes ?? PACK_PART_BYTES;
      // The first part: the smallest blobs up to FIRST_PART_BYTES (at least one), so the guest starts writing
      // files within a fraction of a second; the rest in parts of partBytes, packed meanwhile.
      const firstBytes = Math.min(source.firstPartBytes ?? FIRST_PART_BYTES, partBytes);
      let first = 0;
      for (let sum = 0; first < split.headBlobSizes.length; first++) {
        sum += split.headBlobSizes[first] ?? 0;
        if (first > 0 && sum > firstBytes) break;
      }
      const ids = [...blobs.keys()];
      const between = function* (from: number, to: number): Generator<string> {
        for (let i = from; i < to; i++) yield ids[i] as string;
      };
      const packOpts = { partBytes, stored: source.storeBlobs };
      const parts = (prefix: string, from: number, to: number) =>
        from < to ? packedMeanwhile(packObjects(source.root, between(from, to), dir, prefix, packOpts, run, abort.signal)) : [];
      const firstParts = parts('first', 0, first);
      const otherParts = parts('blobs', first, ids.length);
      const indexFile = join(dir, 'index');
      const indexDone = early(headIndex(source.root, head, indexFile, run, abort.signal));
      // The history is listed and packed meanwhile too: it goes after the first part.
      const history = early(
        historyObjects(source.root, head, source.historyDepth ?? DEFAULT_HISTORY_DEPTH, (id) => !blobs.has(id), run, abort.signal).then(
          ({ objects, shallow }) => ({
            packs: packedMeanwhile(packObjects(source.root, objects, dir, 'history', {}, run, abort.signal)),
            shallow,
          }),
        ),
      );
      const send = async function* (p: PackFile): AsyncGenerator<Buffer> {
        let mine = '';
        let count = 0;
        for (const id of await packIndexIds(p.idx.path, hashBytes)) {
          const paths = blobs.get(id);
          if (!paths) continue;
          mine += `${paths}\0`;
          count += paths.split('\0').length;
        }
        const list = Buffer.from(mine);
        yield Buffer.from(`part ${p.id} ${p.pack.size} ${p.idx.size} ${list.length}\n`);
        yield* file(p.pack.path, true);
        yield* file(p.idx.path, false);
        yield list;
        checkedOut += count;
        report();
        // Sent: its space on the host is not needed any more.
        await Promise.all([rm(p.pack.path), rm(p.idx.path)]);
      };
      // HEAD's index, then the first part: the guest checks its files out while the history and the other
      // parts arrive.
      await indexDone;
      yield Buffer.from(`index ${(await stat(indexFile)).size}\n`);
      yield* file(indexFile, false);
      for await (const p of firstParts) yield* send(p);
      const { packs, shallow } = await history;
      const shallowBytes = Buffer.from(shallow.map((c) => `${c}\n`).join(''));
      yield Buffer.from(`shallow ${shallowBytes.length}\n`);
      yield shallowBytes;
      for await (const p of packs) {
        yield Buffer.from(`pack ${p.id} ${p.pack.size} ${p.idx.size}\n`);
        yield* file(p.pack.path, true);
        yield* file(p.idx.path, false);
      }
      for await (const p of otherParts) yield* send(p);
      finished = true;
    } finally {
      // Failed or left early: stop the git processes still packing before their directory goes.
      if (!finished) abort.abort();
      await Promise.allSettled(pending);
      await rm(dir, { recursive: true, force: true });
    }
  }

  async function* file(path: string, counted: boolean): AsyncGenerator<Buffer> {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 16, signal: abort.signal })) {
      if (counted) {
        packBytes += (chunk as Buffer).length;
        report();
      }
      yield chunk as Buffer;
    }
  }

  const out = Readable.from(records(), { objectMode: false });
  out.once('close', () => {
    opts.signal?.removeEventListener('abort', onOuterAbort);
    // The consumer went away or the stream failed: stop git and the file reads.
    abort.abort();
  });
  return out;
}

/**
 * A stream that is `make()`'s once it resolves: the import script starts in the guest (its checks, `git init`)
 * while the host still plans what to send. A rejection is the stream's error; destroying it before then
 * destroys the stream `make()` gives.
 */
export function deferredStream(make: () => Promise<Readable>): Readable {
  let inner: Readable | undefined;
  let gone = false;
  async function* relay(): AsyncGenerator<Buffer> {
    const r = await make();
    if (gone) {
      r.destroy();
      return;
    }
    inner = r;
    for await (const chunk of r) yield chunk as Buffer;
  }
  const out = Readable.from(relay(), { objectMode: false });
  out.once('close', () => {
    gone = true;
    inner?.destroy();
  });
  return out;
}
