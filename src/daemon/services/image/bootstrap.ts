/**
 * The Debian part of an image build: a root filesystem tree from mmdebstrap, either bootstrapped from
 * nothing (then saved as a base layer, see layers.ts) or unpacked from the largest cached base layer whose
 * package set the build's contains, with only the missing packages installed on top by apt in the tree.
 * Both paths end with the same tree: mmdebstrap runs in both, with the same options, sources, apt config
 * (no Recommends) and cleanup; on a layer it only installs the missing packages (variant `custom`).
 */
import type { CommandRunner } from '../../../shared/command.js';
import type { Logger } from '../../../shared/logger.js';
import { cancelled } from '../../../errors/index.js';
import { mkdir, rm } from 'node:fs/promises';
import { shJoin } from '../../guest/shell.js';
import { rootlessUnpackArgs } from './rootless.js';
import { normalizePackages, type LayerBase, type LayerCache, type LayerManifest } from './layers.js';

/** Packages every image has. The kernel comes from the guest's own package, not the host. */
export const BASE_PACKAGES = [
  'linux-image-cloud-amd64',
  'openssh-server',
  'git',
  'ca-certificates',
  'iproute2',
  'procps',
  'kmod',
  'netbase',
  'busybox-static',
  // The guest agent runs on the guest's Node; its terminal sessions use python3's pty module.
  'nodejs',
  'python3',
] as const;

/**
 * What a developer expects on a fresh Debian box, in every image but `--minimal` ones: Docker (Debian's
 * docker.io with containerd and runc; dockerd starts on first use), a C toolchain and everyday tools.
 */
export const DEVELOPER_PACKAGES = [
  'docker.io',
  'iptables',
  'build-essential',
  'curl',
  'jq',
  'ripgrep',
  'unzip',
  'xz-utils',
  'less',
  'vim-tiny',
  'tmux',
] as const;

/** The build steps of this part, in the order they can run. */
export type BootstrapStep = 'restore base layer' | 'bootstrap rootfs' | 'install extra packages' | 'save base layer';

/** mmdebstrap's variant for a full bootstrap (part of a layer's identity). */
export const BOOTSTRAP_VARIANT = 'minbase';

/** mmdebstrap's options that shape the tree: docs/man/locales trimmed (part of a layer's identity). */
export const BOOTSTRAP_OPTIONS = [
  '--dpkgopt=path-exclude=/usr/share/man/*',
  '--dpkgopt=path-exclude=/usr/share/doc/*',
  // Licences stay: dpkg applies the last matching path filter.
  '--dpkgopt=path-include=/usr/share/doc/*/copyright',
  '--dpkgopt=path-exclude=/usr/share/locale/*',
  '--dpkgopt=path-exclude=/usr/share/info/*',
  '--aptopt=Acquire::Retries "3"',
] as const;

/** Every package mmdebstrap is asked to include, in order, without duplicates. */
export function includedPackages(p: { packages: readonly string[]; minimal?: boolean }): string[] {
  return [...new Set([...BASE_PACKAGES, ...(p.minimal ? [] : DEVELOPER_PACKAGES), ...p.packages])];
}

/**
 * mmdebstrap's own recipe for a package cache: fill the chroot's archive from it before apt runs (so only
 * new .debs are downloaded), keep the essential ones, and copy the archive back before it is cleaned.
 * `beforeSyncOut`: customize hooks that must run while the archive is still there.
 */
function cacheArgs(aptCacheDir: string | undefined, beforeSyncOut: string[] = []): string[] {
  if (!aptCacheDir) return beforeSyncOut.map((h) => `--customize-hook=${h}`);
  return [
    '--skip=download/empty',
    '--skip=essential/unlink',
    `--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
    `--setup-hook=sync-in ${aptCacheDir} /var/cache/apt/archives/`,
    ...beforeSyncOut.map((h) => `--customize-hook=${h}`),
    `--customize-hook=sync-out /var/cache/apt/archives ${aptCacheDir}`,
  ];
}

/** mmdebstrap's argv (without the command): minbase plus packages, docs/man/locales trimmed. */
export function mmdebstrapArgs(p: {
  suite: string;
  mirror: string;
  packages: readonly string[];
  targetDir: string;
  minimal?: boolean;
  aptCacheDir?: string;
  /** mmdebstrap's unshare mode (a normal user's build; `targetDir` is then a tarball). */
  unshare?: boolean;
}): string[] {
  return [
    ...(p.unshare ? ['--mode=unshare'] : []),
    `--variant=${BOOTSTRAP_VARIANT}`,
    `--include=${includedPackages(p).join(',')}`,
    ...cacheArgs(p.aptCacheDir),
    ...BOOTSTRAP_OPTIONS,
    p.suite,
    p.targetDir,
    p.mirror,
  ];
}

/**
 * mmdebstrap's argv installing `extra` into `targetDir`, which already holds a base layer (without /dev,
 * which mmdebstrap's setup makes): variant `custom` with nothing to bootstrap, the same sources, options
 * and cleanup as {@link mmdebstrapArgs}, and apt inside the tree installing the packages as mmdebstrap's own
 * install step does.
 */
export function layeredMmdebstrapArgs(p: {
  suite: string;
  mirror: string;
  extra: readonly string[];
  targetDir: string;
  aptCacheDir?: string;
}): string[] {
  const install =
    'chroot "$1" env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true LC_ALL=C.UTF-8 ' +
    `apt-get --yes -oDpkg::Use-Pty=false install -- ${shJoin(p.extra)}`;
  return [
    '--variant=custom',
    '--skip=check/empty',
    ...cacheArgs(p.aptCacheDir, [install]),
    ...BOOTSTRAP_OPTIONS,
    p.suite,
    p.targetDir,
    p.mirror,
  ];
}

export interface BootstrapPlan {
  steps: BootstrapStep[];
  /** The layer to start from, if any. */
  layer?: LayerManifest;
  /** Packages to install on top of the layer. */
  extra: string[];
}

/**
 * The steps a bootstrap of `packages` takes given the cached layers (none when `layers` is undefined).
 * `noCache`: bootstrap from nothing whatever is cached (and save a fresh layer).
 */
export async function planBootstrap(
  layers: LayerCache | undefined,
  base: LayerBase,
  packages: readonly string[],
  log: Pick<Logger, 'warn'>,
  opts: { noCache?: boolean | undefined } = {},
): Promise<BootstrapPlan> {
  const full: BootstrapPlan = { steps: layers ? ['bootstrap rootfs', 'save base layer'] : ['bootstrap rootfs'], extra: [] };
  if (!layers || opts.noCache) return full;
  const layer = await layers.find(base, packages).catch((e: unknown) => {
    log.warn({ err: String(e) }, 'cannot read the image layer cache; bootstrapping from scratch');
    return undefined;
  });
  if (!layer) return full;
  const have = new Set(layer.packages);
  const extra = normalizePackages(packages).filter((p) => !have.has(p));
  return { steps: extra.length ? ['restore base layer', 'install extra packages'] : ['restore base layer'], layer, extra };
}

export interface BootstrapContext {
  params: { suite: string; mirror: string; packages: readonly string[]; minimal?: boolean };
  base: LayerBase;
  rootDir: string;
  aptCacheDir?: string;
  layers?: LayerCache;
  /** Bound to the build's environment and signal. */
  run: CommandRunner;
  log: Logger;
  logLines: (chunk: string) => void;
  /** Starts a step (reports progress); throws when the build was cancelled. */
  step: (name: BootstrapStep, detail?: string) => void;
  /** The plan changed (a layer could not be restored): these steps follow the current one. */
  replan: (next: BootstrapStep[]) => void;
  removeTree: (dir: string) => Promise<void>;
  /**
   * A normal user's build: mmdebstrap (unshare mode) writes `tarball`, which `nsRun` (a runner inside the
   * user namespace of rootless.ts) unpacks into `rootDir`. Layers are not used then.
   */
  rootless?: { nsRun: CommandRunner; tarball: string };
  signal?: AbortSignal;
}

/** Makes `ctx.rootDir` the bootstrapped tree, following `plan` (falling back to a full bootstrap). */
export async function bootstrapRootfs(plan: BootstrapPlan, ctx: BootstrapContext): Promise<void> {
  const { params, rootDir, run } = ctx;
  if (plan.layer && ctx.layers) {
    const layer = plan.layer;
    ctx.step('restore base layer', `${layer.packages.length} packages cached${plan.extra.length ? `, ${plan.extra.length} to add` : ''}`);
    try {
      await ctx.layers.restore(layer, rootDir, { withoutDev: plan.extra.length > 0, signal: ctx.signal });
    } catch (e) {
      if (ctx.signal?.aborted) throw cancelled('image build cancelled');
      ctx.log.warn({ layer: layer.key, err: String(e).split('\n')[0] }, 'cannot restore the base layer; bootstrapping from scratch');
      await ctx.removeTree(rootDir);
      ctx.replan(['bootstrap rootfs', 'save base layer']);
      return bootstrapRootfs({ steps: ['bootstrap rootfs', 'save base layer'], extra: [] }, ctx);
    }
    if (plan.extra.length === 0) return;
    ctx.step('install extra packages', plan.extra.join(' '));
    const args = layeredMmdebstrapArgs({ ...params, extra: plan.extra, targetDir: rootDir, aptCacheDir: ctx.aptCacheDir });
    await run('mmdebstrap', args, { onOutput: ctx.logLines });
    return;
  }
  ctx.step('bootstrap rootfs', `${params.suite} from ${params.mirror}${ctx.rootless ? ' (unshare mode)' : ''}`);
  if (ctx.rootless) {
    const { nsRun, tarball } = ctx.rootless;
    const args = mmdebstrapArgs({ ...params, aptCacheDir: ctx.aptCacheDir, targetDir: tarball, unshare: true });
    await run('mmdebstrap', args, { onOutput: ctx.logLines });
    await mkdir(rootDir, { recursive: true });
    await nsRun('tar', rootlessUnpackArgs(tarball, rootDir));
    await rm(tarball, { force: true });
    return;
  }
  await run('mmdebstrap', mmdebstrapArgs({ ...params, aptCacheDir: ctx.aptCacheDir, targetDir: rootDir }), {
    onOutput: ctx.logLines,
  });
  if (!ctx.layers) return;
  ctx.step('save base layer');
  try {
    const saved = await ctx.layers.save(ctx.base, includedPackages(params), rootDir, ctx.signal);
    ctx.log.info({ layer: saved.key, bytes: saved.sizeBytes }, 'saved the image base layer');
  } catch (e) {
    if (ctx.signal?.aborted) throw cancelled('image build cancelled');
    // The image does not need the layer: only the next build's speed does.
    ctx.log.warn({ err: String(e).split('\n')[0] }, 'cannot save the image base layer; the build goes on');
  }
}
