import type { CommandRunner } from '../../../shared/command.js';
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
  /** Paths the guest checks out from HEAD, sorted like `send`, with their blob ids. */
  checkout: { path: string; oid: string }[];
  /** Every blob id of HEAD's tree, smallest first (the guest's object store needs them all, edited files' too). */
  headBlobs: string[];
  /** Their total size, uncompressed: what their packs take on the host at most, stored. */
  headBlobBytes: number;
}

/** `git ls-tree -r -l` of HEAD: path -> mode, object id and size (null for gitlinks). */
async function headTree(
  root: string,
  head: string,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<Map<string, { mode: string; oid: string; size: number | null }>> {
  const r = await run('git', ['ls-tree', '-r', '-z', '-l', '--full-tree', head], {
    cwd: root,
    env: gitEnv(),
    signal,
    maxOutputBytes: 512 << 20,
  });
  const out = new Map<string, { mode: string; oid: string; size: number | null }>();
  for (const rec of r.stdout.split('\0')) {
    if (rec === '') continue;
    const tab = rec.indexOf('\t');
    const [mode, , oid, size] = rec.slice(0, tab).trim().split(/ +/);
    if (!mode || !oid) continue;
    out.set(rec.slice(tab + 1), { mode, oid, size: size === undefined || size === '-' ? null : Number(size) });
  }
  return out;
}

/** Splits a full import's entries; with no HEAD or no manifest everything is sent. */
export async function splitByHead(
  root: string,
  head: string | null,
  entries: readonly ImportEntry[],
  manifest: Manifest | null,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<CheckoutSplit> {
  if (head === null || manifest === null) return { send: [...entries], checkout: [], headBlobs: [], headBlobBytes: 0 };
  const tree = await headTree(root, head, run, signal);
  const send: ImportEntry[] = [];
  const checkout: { path: string; oid: string }[] = [];
  for (const e of entries) {
    const t = tree.get(e.path);
    const m = manifest.entries.get(e.path);
    const same =
      t !== undefined &&
      m === `${t.mode} ${t.oid}` &&
      !e.untracked &&
      t.mode === gitMode(e) &&
      (e.kind === 'symlink' || (e.kind === 'file' && t.size === e.size));
    if (same) {
      checkout.push({ path: e.path, oid: t.oid });
    } else send.push(e);
  }
  // Smallest first: git writes the packs in this order, and the guest checks out the many small files
  // while the few large ones are still on their way (writing a file costs the guest more than its bytes).
  const blobs = [...tree.values()].filter((t) => t.mode !== '160000').sort((a, b) => (a.size ?? 0) - (b.size ?? 0));
  const sizes = new Map(blobs.map((t) => [t.oid, t.size ?? 0]));
  const headBlobs = [...sizes.keys()];
  const headBlobBytes = [...sizes.values()].reduce((a, b) => a + b, 0);
  return { send, checkout, headBlobs, headBlobBytes };
}
