/**
 * Builds a guest image from Debian packages: kernel, a tiny BusyBox initrd and an ext4 root filesystem.
 * As root: mmdebstrap's root mode; as a normal user: its unshare mode and a user namespace (rootless.ts).
 * Needs mmdebstrap, cpio, gzip, mkfs.ext4 and du on the host (and uidmap's newuidmap as a user); no
 * filesystem is mounted by banger itself (mmdebstrap mounts /proc etc. inside its chroot while it runs,
 * which is why scratch trees are removed through leftovers.ts, never by a bare rm -rf).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BangerError, ErrorCode, cancelled, invalidArgument, toBangerError } from '../../../errors/index.js';
import { withSbinPath, type CommandRunner } from '../../../shared/command.js';
import { GUEST_PATHS } from '../../guest/init/scripts.js';
import { imageContents, resolveAgentBundle, resolveMiseBinary, type ImageContents } from './inputs.js';
import { procHost, removeBuildLeftovers } from './leftovers.js';
import type { Logger } from '../../../shared/logger.js';
import { BOOTSTRAP_OPTIONS, BOOTSTRAP_VARIANT, bootstrapRootfs, includedPackages, planBootstrap } from './bootstrap.js';
import type { LayerBase, LayerCache } from './layers.js';
import { buildInitrd, configureRootfs } from './tree.js';
import { rootlessRemove } from './rootless.js';

export { resolveAgentBundle, resolveMiseBinary, type ImageContents } from './inputs.js';
export { guestKernelArgs, hostTscKhz } from '../../guest/init/cmdline.js';
export { DEFAULT_DEBIAN_MIRROR, hostMirror, readHostMirror } from './mirror.js';
export { mountsUnder } from './leftovers.js';
export { BASE_PACKAGES, DEVELOPER_PACKAGES, layeredMmdebstrapArgs, mmdebstrapArgs } from './bootstrap.js';
export { cpioArgs } from './tree.js';

export interface ImageBuildParams {
  /** Image name, recorded in the guest at /etc/banger-image. */
  name: string;
  /** Extra Debian packages on top of {@link BASE_PACKAGES}. */
  packages: string[];
  /** Debian suite, e.g. `bookworm`. */
  suite: string;
  /** Debian mirror URL, e.g. the host's (see readHostMirror). */
  mirror: string;
  /** Size of rootfs.ext4; 0 or absent: the tree's size plus {@link ROOTFS_FREE_MIB} free. */
  sizeMib?: number | undefined;
  /** Only {@link BASE_PACKAGES} (plus `packages`), without {@link DEVELOPER_PACKAGES}. */
  minimal?: boolean;
  /** Where downloaded .debs are kept between builds (a rebuild downloads only what is new). */
  aptCacheDir?: string;
  /** Bootstrap from nothing even when a cached base layer fits (a fresh layer is still saved). */
  noCache?: boolean;
}

export interface ImageBuildDeps {
  run: CommandRunner;
  /** The build's log (the daemon's logger, scoped to the image); tool output goes to it at debug level. */
  log: Logger;
  /** The mise binary to install; default: the `@jdxcode/mise-linux-x64` package's `bin/mise`. */
  miseBinary?: string;
  /** The guest agent bundle to install; default: `dist/banger-agent.js` beside the running daemon. */
  agentBundle?: string;
  /** Cached base layers (bootstrapped trees); without it every build bootstraps from nothing. */
  layers?: LayerCache;
  /**
   * Set when the daemon is not root: runs a command in a user namespace where the user is root and the
   * subordinate ids follow (rootless.ts). The bootstrap then uses mmdebstrap's unshare mode, and `du`,
   * `mkfs.ext4` and removal of the tree run through it; `layers` is ignored.
   */
  userNs?: CommandRunner;
}

export interface ImageFile {
  role: 'kernel' | 'initrd' | 'rootfs';
  path: string;
  sizeBytes: number;
  sha256: string;
}

export interface ImageArtifacts {
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  /** `uname -r` of the guest kernel, e.g. `6.1.0-50-cloud-amd64`. */
  kernelVersion: string;
  files: ImageFile[];
  /** What the image holds, for `image show`. */
  contents: ImageContents;
  /** Seconds each build step took, in order. */
  stepSeconds: { step: string; seconds: number }[];
}

export interface BuildStep {
  /** Progress label, one of {@link BUILD_STEPS}. */
  name: string;
  /** 1-based position of this step. */
  index: number;
  total: number;
  detail?: string;
}

/**
 * Every step name, in the order they can run. A build runs `bootstrap rootfs` then `save base layer`, or,
 * from a cached layer, `restore base layer` then (when it lacks packages) `install extra packages`.
 */
export const BUILD_STEPS = [
  'restore base layer',
  'bootstrap rootfs',
  'install extra packages',
  'save base layer',
  'install mise',
  'configure guest',
  'build initrd',
  'make ext4',
  'checksum',
] as const;
type BuildStepName = (typeof BUILD_STEPS)[number];

/** The steps after the bootstrap, the same in every build. */
const IMAGE_STEPS = ['install mise', 'configure guest', 'build initrd', 'make ext4', 'checksum'] as const;

/** File names of the artifacts inside the output directory. */
export const ARTIFACT_NAMES = { kernel: 'vmlinuz', initrd: 'initrd.img', rootfs: 'rootfs.ext4' } as const;

/** Free space a default-sized root filesystem keeps for the user. */
export const ROOTFS_FREE_MIB = 1024;

const DEB_PACKAGE = /^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+|\/[a-z0-9-]+)?$/;
const SUITE = /^[a-z0-9][a-z0-9.-]*$/;

/** Checks the build parameters; throws InvalidArgument naming the bad one. */
export function validateBuildParams(p: ImageBuildParams): void {
  if (!SUITE.test(p.suite)) throw invalidArgument(`suite ${JSON.stringify(p.suite)} is not a Debian suite name`);
  if (!/^(https?|file):\/\/\S+$/.test(p.mirror))
    throw invalidArgument(`mirror ${JSON.stringify(p.mirror)} is not an http(s):// or file:// URL`);
  for (const pkg of p.packages)
    if (!DEB_PACKAGE.test(pkg))
      throw invalidArgument(`${JSON.stringify(pkg)} is not a Debian package name`, 'e.g. `--package build-essential`');
  if (p.sizeMib !== undefined && (!Number.isInteger(p.sizeMib) || p.sizeMib < 0))
    throw invalidArgument(`size ${p.sizeMib} MiB is not a whole number of MiB`);
}

/** mkfs.ext4's argv: the tree `dir` becomes the filesystem, owned by root. */
export function mkfsArgs(dir: string, out: string, sizeMib: number): string[] {
  return ['-q', '-F', '-L', 'rootfs', '-d', dir, '-E', 'root_owner=0:0', out, `${sizeMib}M`];
}

/**
 * Root filesystem size for a tree using `usedBytes`: the tree plus 10% and 64 MiB for ext4's own
 * metadata (journal, inode tables), plus {@link ROOTFS_FREE_MIB} free, rounded up to 64 MiB.
 */
export function defaultRootfsSizeMib(usedBytes: number): number {
  const usedMib = Math.ceil(usedBytes / 2 ** 20);
  const raw = Math.ceil(usedMib * 1.1) + 64 + ROOTFS_FREE_MIB;
  return Math.ceil(raw / 64) * 64;
}

/** Debian kernel versions from /boot file names (`vmlinuz-<version>`), newest last. */
export function kernelVersions(bootEntries: readonly string[]): string[] {
  return bootEntries
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}


async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { signal, highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Builds an image into `outDir` (created if missing): `vmlinuz`, `initrd.img`, `rootfs.ext4`.
 * Scratch trees (`outDir/rootfs.d`, `outDir/initrd.d`) are removed whether the build succeeds or not;
 * the caller owns `outDir` and removes it after a failure. Cancelled through `signal` between and
 * during steps (a running command gets SIGTERM).
 */
export async function buildImage(
  params: ImageBuildParams,
  outDir: string,
  deps: ImageBuildDeps,
  onStep: (step: BuildStep) => void,
  signal?: AbortSignal,
): Promise<ImageArtifacts> {
  validateBuildParams(params);
  const env = withSbinPath(process.env);
  const run: CommandRunner = (cmd, args, opts = {}) => deps.run(cmd, args, { env, signal, ...opts });
  const rootDir = join(outDir, 'rootfs.d');
  const initrdDir = join(outDir, 'initrd.d');
  const kernelPath = join(outDir, ARTIFACT_NAMES.kernel);
  const initrdPath = join(outDir, ARTIFACT_NAMES.initrd);
  const rootfsPath = join(outDir, ARTIFACT_NAMES.rootfs);
  let plan: BuildStepName[] = [];
  let stepIndex = 0;
  let current: BuildStepName | undefined;
  const stepSeconds: ImageArtifacts['stepSeconds'] = [];
  let stepStarted = Date.now();
  const endStep = () => {
    if (current) stepSeconds.push({ step: current, seconds: Math.round((Date.now() - stepStarted) / 100) / 10 });
    stepStarted = Date.now();
  };
  const step = (name: BuildStepName, detail?: string) => {
    if (signal?.aborted) throw cancelled('image build cancelled');
    endStep();
    current = name;
    stepIndex += 1;
    deps.log.info({ step: name, index: stepIndex, total: plan.length, detail }, 'image build step');
    onStep({ name, index: stepIndex, total: plan.length, ...(detail ? { detail } : {}) });
  };
  const logLines = (chunk: string) => {
    for (const l of chunk.split('\n')) if (l.trim()) deps.log.debug(l.trimEnd());
  };
  const hostRun: CommandRunner = (cmd, args, opts = {}) => deps.run(cmd, args, { env, ...opts });
  const userNs = deps.userNs;
  const nsRun: CommandRunner | undefined = userNs && ((cmd, args, opts = {}) => userNs(cmd, args, { env, signal, ...opts }));
  const host = procHost(hostRun, userNs && rootlessRemove((cmd, args, opts = {}) => userNs(cmd, args, { env, ...opts })));
  // Not tied to `signal`: a cancelled build must still be cleaned up.
  const removeTree = (dir: string) => removeBuildLeftovers(dir, host, deps.log);

  const cleanup = async () => {
    await removeTree(rootDir);
    await removeTree(initrdDir);
  };

  try {
    await mkdir(outDir, { recursive: true });
    await removeTree(rootDir);
    await removeTree(initrdDir);

    const aptCacheDir = params.aptCacheDir && !/\s/.test(params.aptCacheDir) ? params.aptCacheDir : undefined;
    if (aptCacheDir) await mkdir(aptCacheDir, { recursive: true, mode: 0o700 });
    const base: LayerBase = {
      suite: params.suite,
      mirror: params.mirror,
      variant: BOOTSTRAP_VARIANT,
      architecture: (await run('dpkg', ['--print-architecture'])).stdout.trim(),
      options: BOOTSTRAP_OPTIONS,
    };
    const packages = includedPackages(params);
    const layers = nsRun ? undefined : deps.layers;
    const bootstrap = await planBootstrap(layers, base, packages, deps.log, { noCache: params.noCache });
    plan = [...bootstrap.steps, ...IMAGE_STEPS];
    await bootstrapRootfs(bootstrap, {
      params,
      base,
      rootDir,
      aptCacheDir,
      layers,
      run,
      log: deps.log,
      logLines,
      step,
      replan: (next) => {
        plan = [...plan.slice(0, stepIndex), ...next, ...IMAGE_STEPS];
      },
      removeTree,
      ...(nsRun ? { rootless: { nsRun, tarball: join(outDir, 'rootfs.tar') } } : {}),
      signal,
    });

    step('install mise');
    const mise = deps.miseBinary ?? resolveMiseBinary();
    // Copied as is: a stripped mise segfaults.
    await copyFile(mise, join(rootDir, 'usr/local/bin/mise'));
    await chmod(join(rootDir, 'usr/local/bin/mise'), 0o755);
    await mkdir(join(rootDir, dirname(GUEST_PATHS.agent)), { recursive: true });
    await copyFile(deps.agentBundle ?? resolveAgentBundle(), join(rootDir, GUEST_PATHS.agent));
    await chmod(join(rootDir, GUEST_PATHS.agent), 0o644);

    step('configure guest');
    await configureRootfs(rootDir, params, run);
    const contents = await imageContents(rootDir, mise, run);

    const versions = kernelVersions(await readdir(join(rootDir, 'boot')));
    const kernelVersion = versions[versions.length - 1];
    if (!kernelVersion)
      throw new BangerError(ErrorCode.Internal, 'the root filesystem has no /boot/vmlinuz-*', {
        hint: 'keep linux-image-cloud-amd64 in the package list',
      });
    step('build initrd', `kernel ${kernelVersion}`);
    await copyFile(join(rootDir, 'boot', `vmlinuz-${kernelVersion}`), kernelPath);
    await buildInitrd(params.name, rootDir, initrdDir, initrdPath, kernelVersion, run);
    // Debian's own initramfs is never used.
    for (const n of await readdir(join(rootDir, 'boot')))
      if (n.startsWith('initrd.img-')) await rm(join(rootDir, 'boot', n), { force: true });

    const du = await (nsRun ?? run)('du', ['-s', '-x', '-B1', rootDir]);
    const usedBytes = Number(du.stdout.split(/\s/)[0]);
    const minMib = defaultRootfsSizeMib(usedBytes) - ROOTFS_FREE_MIB;
    const sizeMib = params.sizeMib ? params.sizeMib : defaultRootfsSizeMib(usedBytes);
    if (sizeMib < minMib)
      throw invalidArgument(
        `a ${sizeMib} MiB root filesystem cannot hold this image`,
        `give at least ${minMib} MiB, or leave the size out`,
      );
    step('make ext4', `${sizeMib} MiB`);
    await rm(rootfsPath, { force: true });
    await (nsRun ?? run)('mkfs.ext4', mkfsArgs(rootDir, rootfsPath, sizeMib), { onOutput: logLines });

    step('checksum');
    const files: ImageFile[] = [];
    for (const [role, path] of [
      ['kernel', kernelPath],
      ['initrd', initrdPath],
      ['rootfs', rootfsPath],
    ] as const) {
      files.push({ role, path, sizeBytes: (await stat(path)).size, sha256: await sha256File(path, signal) });
    }
    endStep();
    await cleanup();
    return { kernelPath, initrdPath, rootfsPath, kernelVersion, files, contents, stepSeconds };
  } catch (e) {
    await cleanup().catch((c: unknown) => deps.log.warn({ err: String(c) }, 'cleanup after a failed build failed'));
    if (signal?.aborted) throw cancelled('image build cancelled');
    throw toBangerError(e);
  }
}
