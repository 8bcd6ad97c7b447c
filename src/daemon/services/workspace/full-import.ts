import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import type { CommandRunner } from '../../../shared/command.js';
import { NUL, runRecords, text } from '../../../shared/records.js';
import { listImportFiles, type HostRepo, type ImportFileList } from './host-repo.js';
import { LISTING_MAX_BYTES, stageRecord, withStateIndex, type PendingManifest } from './manifest.js';
import { splitByHead, type CheckoutSplit, type HeadDiff } from './checkout-split.js';
import { mayBeMiseConfig } from './resync-script.js';

/**
 * What a full import sends, read from the host checkout: the split of its files (checkout-split.ts),
 * the manifest recorded after it, and the figures its result reports. For 100,000 files each per-file
 * list is megabytes, so none is held longer than it is needed: the manifest's entries go to a file as
 * git lists them (the split asks git which paths differ from HEAD instead of comparing two maps), and
 * the list of every entry is dropped here; while the import runs only what is still to be sent is held.
 */
export interface FullImportPlan {
  split: CheckoutSplit;
  /** Its entries wait in the file planFullImport was given. */
  manifest: PendingManifest | null;
  /**
   * The state imported is HEAD's tree exactly (no edit, deletion or untracked file imported): the guest's
   * import base is HEAD's tree, and its index HEAD's, with nothing to hash (ImportScriptOptions.stateIsHead).
   */
  stateIsHead: boolean;
  /** The listing's figures and notices, without its entries. */
  list: Omit<ImportFileList, 'entries'> & {
    /** Entries listed (files, symlinks and submodule directories). */
    count: number;
    /** Files and symlinks. */
    files: number;
    /** Whether a listed path may be a mise config file (the guest trusts them). */
    trustMise: boolean;
  };
}

/** Plans a full import of `repo`; the manifest's entries are written to `pendingFile` (the caller removes it). */
export async function planFullImport(
  repo: HostRepo,
  includeUntracked: boolean,
  pendingFile: string,
  run: CommandRunner,
  signal: AbortSignal | undefined,
  tmpDir: string,
): Promise<FullImportPlan> {
  const { entries, ...rest } = await listImportFiles(repo.root, { includeUntracked }, run, signal);
  // The listing named the untracked repositories: the state leaves them out without listing again.
  const untracked = includeUntracked ? rest.skippedRepositories : null;
  const state = await importManifest(repo, untracked, pendingFile, run, signal, tmpDir);
  const split = await splitByHead(repo.root, repo.headCommit, entries, state && state.diff, run, signal);
  const list = {
    ...rest,
    count: entries.length,
    files: entries.filter((e) => e.kind !== 'dir').length,
    trustMise: entries.some((e) => mayBeMiseConfig(e.path)),
  };
  const stateIsHead = repo.headCommit !== null && state !== null && state.diff.changed.size === 0;
  return { split, manifest: state && state.manifest, stateIsHead, list };
}

/**
 * The manifest of a full import (manifest.ts hostManifest), its entries written to `file` as
 * writeManifest records them, and the paths where that state differs from HEAD's tree. Null when git
 * cannot compute it.
 */
async function importManifest(
  repo: HostRepo,
  /** withStateIndex's `untracked`. */
  untracked: readonly string[] | null,
  file: string,
  run: CommandRunner,
  signal: AbortSignal | undefined,
  tmpDir: string,
): Promise<{ manifest: PendingManifest; diff: HeadDiff } | null> {
  return withStateIndex(repo.root, untracked, run, signal, tmpDir, async (tree, opts) => {
    const out = createWriteStream(file);
    const written = finished(out);
    written.catch(() => undefined);
    let piece = '';
    const ls = await runRecords(
      run,
      'git',
      ['ls-files', '-s', '-z'],
      NUL,
      stageRecord({
        set: (path, value) => {
          piece += `${value}\t${path}\0`;
          if (piece.length < 1 << 16) return;
          out.write(piece);
          piece = '';
        },
      }),
      { ...opts, maxBytes: LISTING_MAX_BYTES },
    );
    out.end(piece);
    await written;
    if (ls.code !== 0 || ls.truncated?.stdout) return null;
    const changed = new Set<string>();
    if (repo.headCommit !== null) {
      // Added, gone, or another mode or blob than HEAD's (what comparing the two listings path by path says).
      const diff = await runRecords(
        run,
        'git',
        ['diff-index', '--cached', '-z', '--name-only', '--no-renames', repo.headCommit, '--'],
        NUL,
        (buf, start, end) => changed.add(text(buf, start, end)),
        opts,
      );
      if (diff.code !== 0) return null;
    }
    return { manifest: { tree, entries: { file } }, diff: { changed } };
  });
}
