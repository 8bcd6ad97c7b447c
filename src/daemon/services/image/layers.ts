/**
 * Base layers: the bootstrapped root filesystem of a build (mmdebstrap's output, before banger's own steps),
 * kept as a zstd tarball under `$BANGER_HOME/cache/layers` so that a later build whose package set is a
 * superset starts from it and installs only the missing packages.
 *
 * A layer is `<key>.tar.zst` plus `<key>.json` (its manifest). The key is a hash of everything the
 * bootstrap depends on ({@link LayerBase}) and of the sorted package set. Both files are written under a
 * temporary name and renamed; the manifest last, and only a layer with both files is ever used, so a build
 * killed while saving leaves at most a `.tmp-*` file that {@link LayerCache.prune} removes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CommandRunner } from '../../../shared/command.js';
import type { Logger } from '../../../shared/logger.js';

/** What a bootstrapped tree depends on besides its package set. */
export interface LayerBase {
  suite: string;
  mirror: string;
  /** mmdebstrap variant, e.g. `minbase`. */
  variant: string;
  /** dpkg architecture, e.g. `amd64`. */
  architecture: string;
  /** mmdebstrap's --dpkgopt/--aptopt arguments: they shape the tree (docs trimmed...). */
  options: readonly string[];
}

export interface LayerManifest {
  key: string;
  /** Hash of the {@link LayerBase}: only layers with the build's own base key are candidates. */
  baseKey: string;
  base: LayerBase;
  /** Every package given to mmdebstrap's --include, sorted. */
  packages: string[];
  createdAt: string;
  /** Last time a build used (or saved) it: pruning keeps the most recently used. */
  usedAt: string;
  sizeBytes: number;
}

/** Bumped when the tarball's layout or contents change meaning: older layers then never match. */
export const LAYER_FORMAT = 1;
/** Layers kept after a save (the most recently used ones). */
export const LAYERS_KEPT = 3;
/** A layer older than this is not used (its packages may lag the mirror) and is pruned. */
export const LAYER_MAX_AGE_MS = 7 * 24 * 3600 * 1000;
/** A temporary file not written to for this long belongs to a build that died. */
const STALE_TMP_MS = 10 * 60 * 1000;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Sorted, without duplicates. */
export function normalizePackages(pkgs: readonly string[]): string[] {
  return [...new Set(pkgs)].sort();
}

export function layerBaseKey(base: LayerBase): string {
  const { suite, mirror, variant, architecture, options } = base;
  return sha256(JSON.stringify({ format: LAYER_FORMAT, suite, mirror, variant, architecture, options })).slice(0, 32);
}

export function layerKey(base: LayerBase, packages: readonly string[]): string {
  return sha256(JSON.stringify({ base: layerBaseKey(base), packages: normalizePackages(packages) })).slice(0, 32);
}

/**
 * The layer to start from: same base, a package set that is a subset of `wanted`, the largest such set
 * (ties: the most recently used), younger than `maxAgeMs`. Undefined when none fits.
 */
export function pickLayer(
  layers: readonly LayerManifest[],
  base: LayerBase,
  wanted: readonly string[],
  now: Date,
  maxAgeMs = LAYER_MAX_AGE_MS,
): LayerManifest | undefined {
  const baseKey = layerBaseKey(base);
  const want = new Set(wanted);
  const fits = layers.filter(
    (l) =>
      l.baseKey === baseKey &&
      now.getTime() - Date.parse(l.createdAt) <= maxAgeMs &&
      l.packages.every((p) => want.has(p)),
  );
  fits.sort((a, b) => b.packages.length - a.packages.length || Date.parse(b.usedAt) - Date.parse(a.usedAt));
  return fits[0];
}

/** Keys to delete: every layer past `maxAgeMs`, then all but the `keep` most recently used. */
export function layersToPrune(
  layers: readonly LayerManifest[],
  now: Date,
  keep = LAYERS_KEPT,
  maxAgeMs = LAYER_MAX_AGE_MS,
): string[] {
  const young = layers.filter((l) => now.getTime() - Date.parse(l.createdAt) <= maxAgeMs);
  const old = layers.filter((l) => !young.includes(l)).map((l) => l.key);
  const byUse = [...young].sort((a, b) => Date.parse(b.usedAt) - Date.parse(a.usedAt));
  return [...old, ...byUse.slice(keep).map((l) => l.key)];
}

/** `tar` argv writing `rootDir` to `file` (zstd), keeping owners by number, modes, xattrs (capabilities), ACLs. */
export function layerTarCreateArgs(rootDir: string, file: string): string[] {
  return ['--create', `--file=${file}`, '--use-compress-program=zstd -1 -T0', ...TAR_META, `--directory=${rootDir}`, '.'];
}

/** `tar` argv unpacking `file` into `rootDir`; `withoutDev`: leave /dev's entries out (mmdebstrap makes them). */
export function layerTarExtractArgs(file: string, rootDir: string, withoutDev: boolean): string[] {
  return [
    '--extract',
    `--file=${file}`,
    '--use-compress-program=zstd -T0',
    ...TAR_META,
    '--same-permissions',
    '--same-owner',
    ...(withoutDev ? ['--exclude=./dev/*'] : []),
    `--directory=${rootDir}`,
  ];
}

const TAR_META = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '--sparse'];

export interface LayerCacheDeps {
  /** `$BANGER_HOME/cache/layers`. */
  dir: string;
  run: CommandRunner;
  log: Pick<Logger, 'info' | 'warn'>;
  now?: () => Date;
  keep?: number;
  maxAgeMs?: number;
}

/** The layers on disk: find, restore, save (atomically) and prune. */
export class LayerCache {
  private readonly now: () => Date;

  constructor(private readonly d: LayerCacheDeps) {
    this.now = d.now ?? (() => new Date());
  }

  private tarball(key: string): string {
    return join(this.d.dir, `${key}.tar.zst`);
  }

  private manifestPath(key: string): string {
    return join(this.d.dir, `${key}.json`);
  }

  /** Complete layers: a readable manifest named after its key and a tarball beside it. */
  async list(): Promise<LayerManifest[]> {
    let names: string[];
    try {
      names = await readdir(this.d.dir);
    } catch {
      return [];
    }
    const out: LayerManifest[] = [];
    for (const n of names) {
      const m = /^([0-9a-f]{32})\.json$/.exec(n);
      if (!m) continue;
      try {
        const man = JSON.parse(await readFile(join(this.d.dir, n), 'utf8')) as LayerManifest;
        if (man.key !== m[1] || !Array.isArray(man.packages)) continue;
        await stat(this.tarball(man.key));
        out.push(man);
      } catch {
        // Half a layer (or one being pruned): never used.
      }
    }
    return out;
  }

  async find(base: LayerBase, packages: readonly string[]): Promise<LayerManifest | undefined> {
    return pickLayer(await this.list(), base, normalizePackages(packages), this.now(), this.d.maxAgeMs);
  }

  /** Unpacks the layer into `rootDir` (created if missing) and marks it used. */
  async restore(layer: LayerManifest, rootDir: string, opts: { withoutDev: boolean; signal?: AbortSignal }): Promise<void> {
    await mkdir(rootDir, { recursive: true });
    await this.d.run('tar', layerTarExtractArgs(this.tarball(layer.key), rootDir, opts.withoutDev), { signal: opts.signal });
    await this.touch(layer).catch(() => undefined);
  }

  /** Saves `rootDir` as the layer for (base, packages), replacing one with the same key; then prunes. */
  async save(base: LayerBase, packages: readonly string[], rootDir: string, signal?: AbortSignal): Promise<LayerManifest> {
    await mkdir(this.d.dir, { recursive: true, mode: 0o700 });
    const key = layerKey(base, packages);
    const tmp = join(this.d.dir, `.tmp-${randomBytes(6).toString('hex')}`);
    try {
      await this.d.run('tar', layerTarCreateArgs(rootDir, `${tmp}.tar.zst`), { signal });
      const now = this.now().toISOString();
      const man: LayerManifest = {
        key,
        baseKey: layerBaseKey(base),
        base: { ...base, options: [...base.options] },
        packages: normalizePackages(packages),
        createdAt: now,
        usedAt: now,
        sizeBytes: (await stat(`${tmp}.tar.zst`)).size,
      };
      await writeFile(`${tmp}.json`, JSON.stringify(man, null, 2) + '\n');
      // The old manifest goes first: between the two renames no manifest points at a tarball being replaced.
      await rm(this.manifestPath(key), { force: true });
      await rename(`${tmp}.tar.zst`, this.tarball(key));
      await rename(`${tmp}.json`, this.manifestPath(key));
      await this.prune();
      return man;
    } finally {
      await rm(`${tmp}.tar.zst`, { force: true });
      await rm(`${tmp}.json`, { force: true });
    }
  }

  /** Removes layers past their age and beyond the most recently used few, and temporary files of dead builds. */
  async prune(): Promise<void> {
    const layers = await this.list();
    for (const key of layersToPrune(layers, this.now(), this.d.keep, this.d.maxAgeMs)) {
      await rm(this.manifestPath(key), { force: true });
      await rm(this.tarball(key), { force: true });
      this.d.log.info({ layer: key }, 'removed an image base layer');
    }
    const known = new Set(layers.map((l) => l.key));
    let names: string[] = [];
    try {
      names = await readdir(this.d.dir);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(this.d.dir, n);
      try {
        const s = await stat(p);
        // A tarball without a manifest, or a temporary file: left by a build that died while saving
        // (one being written now is younger than STALE_TMP_MS).
        const orphan = /^[0-9a-f]{32}\.tar\.zst$/.test(n) && !known.has(n.slice(0, 32));
        if ((orphan || n.startsWith('.tmp-')) && this.now().getTime() - s.mtimeMs > STALE_TMP_MS) await rm(p, { force: true });
      } catch {
        // Gone meanwhile.
      }
    }
  }

  private async touch(layer: LayerManifest): Promise<void> {
    const man = { ...layer, usedAt: this.now().toISOString() };
    const tmp = join(this.d.dir, `.tmp-${randomBytes(6).toString('hex')}.json`);
    await writeFile(tmp, JSON.stringify(man, null, 2) + '\n');
    await rename(tmp, this.manifestPath(layer.key));
    await utimes(this.tarball(layer.key), new Date(), new Date()).catch(() => undefined);
  }
}
