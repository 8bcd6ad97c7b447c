import type { CommandRunner } from '../../../shared/command.js';
import { NUL, runRecords, text } from '../../../shared/records.js';
import { gitEnv, gitMode, type ImportEntry } from './host-repo.js';
import type { Manifest } from './manifest.js';

/**
 * What a full import sends as files and what the guest writes from the history pack instead.
 *
 * The history pack already holds every blob of HEAD's tree. A working-tree file whose content and mode
 * are exactly HEAD's (most files of most checkouts) would otherwise travel twice, once as a file and
 * once in the pack, and the guest would hash it twice (`git index-pack`, then the index refresh). So
 * such a file travels only in the pack and the guest checks it out (`git checkout-index -u`), which
 * writes the file and records its stat data in the index in one pass: nothing is read back.
 *
 * A file goes into `checkout` only when the host's manifest (the working tree as git sees it) has the
 * same mode and object id as HEAD's tree AND its size on disk is the blob's size: a clean filter or an
 * end-of-line conversion (LFS pointers, `ident`, `eol=crlf`) makes the bytes on disk differ from the
 * blob, and those files are sent as they are on disk, as before. Symlinks qualify by target (their
 * object id is the target's hash). Everything else (edits, untracked files, submodule directories) is
 * in `send`, read from the working tree.
 */
export interface CheckoutSplit {
  /** Entries to send as files in the tar. */
  send: ImportEntry[];
  /** Paths the guest checks out from HEAD, sorted like `send`. */
  checkout: string[];
  /**
   * Every blob id of HEAD's tree, smallest first (the guest's object store needs them all, edited files'
   * too), each with the paths of `checkout` that are that blob, NUL-separated and sorted ('' for none).
   * One map for both: it is the largest thing an import of many files holds while it runs.
   */
  headBlobs: Map<string, string>;
  /** Their total size, uncompressed: what their packs take on the host at most, stored. */
  headBlobBytes: number;
  /** Each blob's size, in the order of headBlobs. */
  headBlobSizes: number[];
}

/**
 * Which paths of the state a full import leaves differ from HEAD's tree (mode or blob, added or gone):
 * what comparing a manifest to the tree says, asked of git (full-import.ts) so no manifest is held.
 */
export interface HeadDiff {
  changed: ReadonlySet<string>;
}

/** One record of `git ls-tree -r -z -l`: mode, type, object id, size (null for gitlinks) and path. */
interface TreeRecord {
  mode: string;
  oid: string;
  size: number | null;
  path: string;
}

/** Parses `<mode> <type> <oid> <size>\t<path>` (the size right-aligned, '-' for gitlinks); null when it is not one. */
function treeRecord(buf: Buffer, start: number, end: number): TreeRecord | null {
  const tab = buf.indexOf(0x09, start);
  if (tab === -1 || tab >= end) return null;
  const [mode, , oid, size] = fields(buf, start, tab);
  if (!mode || !oid) return null;
  return { mode, oid, size: size === undefined || size === '-' ? null : Number(size), path: text(buf, tab + 1, end) };
}

/**
 * The space-separated fields of `buf[start, end)`, each decoded on its own: a substring of one string
 * would be a view that keeps all of it alive as long as the blob id is kept.
 */
function fields(buf: Buffer, start: number, end: number): string[] {
  const out: string[] = [];
  for (let i = start; i < end; ) {
    while (i < end && buf[i] === 0x20) i++;
    let j = i;
    while (j < end && buf[j] !== 0x20) j++;
    if (j > i) out.push(buf.toString('latin1', i, j));
    i = j;
  }
  return out;
}

/**
 * Splits a full import's entries by the host's state (its manifest, or how it differs from HEAD); with
 * no HEAD or no state everything is sent.
 */
export async function splitByHead(
  root: string,
  head: string | null,
  entries: readonly ImportEntry[],
  manifest: Manifest | HeadDiff | null,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<CheckoutSplit> {
  if (head === null || manifest === null) return { send: [...entries], checkout: [], headBlobs: new Map(), headBlobBytes: 0, headBlobSizes: [] };
  const index = new Map<string, number>();
  entries.forEach((e, i) => index.set(e.path, i));
  // Per entry: the blob it is checked out of. Per blob of HEAD's tree, in tree order: its id and size.
  const checkoutOf = new Array<string | undefined>(entries.length);
  const oids: string[] = [];
  const sizes: number[] = [];
  // HEAD's tree is read as git lists it, never held whole (100,000 paths are tens of MB as a Map).
  const onRecord = (buf: Buffer, start: number, end: number) => {
    const t = treeRecord(buf, start, end);
    if (t === null) return;
    if (t.mode !== '160000') {
      oids.push(t.oid);
      sizes.push(t.size ?? 0);
    }
    const i = index.get(t.path);
    const e = i === undefined ? undefined : entries[i];
    if (i === undefined || e === undefined) return;
    const same =
      ('changed' in manifest ? !manifest.changed.has(e.path) : manifest.entries.get(e.path) === `${t.mode} ${t.oid}`) &&
      !e.untracked &&
      t.mode === gitMode(e) &&
      (e.kind === 'symlink' || (e.kind === 'file' && t.size === e.size));
    if (same) checkoutOf[i] = t.oid;
  };
  await runRecords(run, 'git', ['ls-tree', '-r', '-z', '-l', '--full-tree', head], NUL, onRecord, {
    cwd: root,
    env: gitEnv(),
    signal,
  });
  // Smallest first: git writes the packs in this order, and the guest checks out the many small files
  // while the few large ones are still on their way (writing a file costs the guest more than its bytes).
  // A stable sort: blobs of one size stay in tree order; a blob at several paths comes once.
  const headBlobs = new Map<string, string>();
  const headBlobSizes: number[] = [];
  let headBlobBytes = 0;
  for (const i of Array.from(oids.keys()).sort((a, b) => (sizes[a] ?? 0) - (sizes[b] ?? 0))) {
    const oid = oids[i] as string;
    if (headBlobs.has(oid)) continue;
    headBlobs.set(oid, '');
    headBlobSizes.push(sizes[i] ?? 0);
    headBlobBytes += sizes[i] ?? 0;
  }
  const send: ImportEntry[] = [];
  const checkout: string[] = [];
  entries.forEach((e, i) => {
    const oid = checkoutOf[i];
    if (oid === undefined) return void send.push(e);
    checkout.push(e.path);
    const paths = headBlobs.get(oid);
    headBlobs.set(oid, paths ? `${paths}\0${e.path}` : e.path);
  });
  return { send, checkout, headBlobs, headBlobBytes, headBlobSizes };
}
