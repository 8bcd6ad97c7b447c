import type { CommandRunner } from '../../../shared/command.js';
import { listImportFiles, type HostRepo, type ImportFileList } from './host-repo.js';
import { hostManifest, type Manifest } from './manifest.js';
import { splitByHead, type CheckoutSplit } from './checkout-split.js';
import { mayBeMiseConfig } from './resync-script.js';

/**
 * What a full import sends, read from the host checkout: the split of its files (checkout-split.ts),
 * the manifest recorded after it, and the figures its result reports. The list of every entry is
 * dropped here: while the import runs, only what is still to be sent is held (for 100,000 files each
 * per-file list is megabytes).
 */
export interface FullImportPlan {
  split: CheckoutSplit;
  manifest: Manifest | null;
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

export async function planFullImport(
  repo: HostRepo,
  includeUntracked: boolean,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<FullImportPlan> {
  const { entries, ...rest } = await listImportFiles(repo.root, { includeUntracked }, run, signal);
  const manifest = await hostManifest(repo.root, includeUntracked, run, signal);
  const split = await splitByHead(repo.root, repo.headCommit, entries, manifest, run, signal);
  const list = {
    ...rest,
    count: entries.length,
    files: entries.filter((e) => e.kind !== 'dir').length,
    trustMise: entries.some((e) => mayBeMiseConfig(e.path)),
  };
  return { split, manifest, list };
}
