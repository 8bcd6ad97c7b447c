/**
 * Builds a guest image from Debian packages: kernel, a tiny BusyBox initrd and an ext4 root filesystem.
 * Needs root (mmdebstrap's root mode) and mmdebstrap, cpio, gzip, mkfs.ext4 and du on the host; no
 * filesystem is mounted by banger itself (mmdebstrap mounts /proc etc. inside its chroot while it runs,
 * which is why scratch trees are removed through leftovers.ts, never by a bare rm -rf).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BangerError, ErrorCode, cancelled, invalidArgument, toBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { ROOT_SKEL_DIR } from '../../guest/init/contract.js';
import { GUEST_PATHS, guestFiles, initrdInit, withGuestEnvironment } from '../../guest/init/scripts.js';
import { INITRD_MODULES, resolveModules } from './modules.js';
import { dockerGuestFiles } from '../../guest/init/docker.js';
import { compileSpawner } from './spawner.js';
import { imageContents, resolveAgentBundle, resolveMiseBinary, type ImageContents } from './inputs.js';

export { resolveAgentBundle, resolveMiseBinary, type ImageContents } from './inputs.js';
import { procHost, removeBuildLeftovers } from './leftovers.js';
import type { Logger } from '../../../shared/logger.js';

export { guestKernelArgs, hostTscKhz } from '../../guest/init/cmdline.js';
export { DEFAULT_DEBIAN_MIRROR, hostMirror, readHostMirror } from './mirror.js';
export { mountsUnder } from './leftovers.js';

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
}

export interface ImageBuildDeps {
  run: CommandRunner;
  /** The build's log (the daemon's logger, scoped to the image); tool output goes to it at debug level. */
  log: Logger;
  /** The mise binary to install; default: the `@jdxcode/mise-linux-x64` package's `bin/mise`. */
  miseBinary?: string;
  /** The guest agent bundle to install; default: `dist/banger-agent.js` beside the running daemon. */
  agentBundle?: string;
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

export const BUILD_STEPS = [
  'bootstrap rootfs',
  'install mise',
  'configure guest',
  'build initrd',
  'make ext4',
  'checksum',
] as const;

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

/** mmdebstrap's argv (without the command): minbase plus packages, docs/man/locales trimmed. */
export function mmdebstrapArgs(p: {
  suite: string;
  mirror: string;
  packages: readonly string[];
  targetDir: string;
  minimal?: boolean;
  aptCacheDir?: string;
}): string[] {
  const include = [...new Set([...BASE_PACKAGES, ...(p.minimal ? [] : DEVELOPER_PACKAGES), ...p.packages])].join(',');
  // mmdebstrap's own recipe for a package cache: fill the chroot's archive from it before apt runs (so only
  // new .debs are downloaded), keep the essential ones, and copy the archive back before it is cleaned.
  const cache = p.aptCacheDir
    ? [
        '--skip=download/empty',
        '--skip=essential/unlink',
        `--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
        `--setup-hook=sync-in ${p.aptCacheDir} /var/cache/apt/archives/`,
        `--customize-hook=sync-out /var/cache/apt/archives ${p.aptCacheDir}`,
      ]
    : [];
  return [
    '--variant=minbase',
    `--include=${include}`,
    ...cache,
    '--dpkgopt=path-exclude=/usr/share/man/*',
    '--dpkgopt=path-exclude=/usr/share/doc/*',
    // Licences stay: dpkg applies the last matching path filter.
    '--dpkgopt=path-include=/usr/share/doc/*/copyright',
    '--dpkgopt=path-exclude=/usr/share/locale/*',
    '--dpkgopt=path-exclude=/usr/share/info/*',
    '--aptopt=Acquire::Retries "3"',
    p.suite,
    p.targetDir,
    p.mirror,
  ];
}

/** `bash -c` argv writing a gzipped newc cpio of `dir` (owned by root, sorted, reproducible) to `out`. */
export function cpioArgs(dir: string, out: string): string[] {
  return [
    '-c',
    'set -euo pipefail; cd "$1"; find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet | gzip -9n > "$2"',
    'banger-cpio',
    dir,
    out,
  ];
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

function withSbin(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const parts = (env.PATH ?? '/usr/bin:/bin').split(':');
  for (const p of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!parts.includes(p)) parts.push(p);
  return { ...env, PATH: parts.join(':') };
}

async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
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
  const env = withSbin(process.env);
  const run: CommandRunner = (cmd, args, opts = {}) => deps.run(cmd, args, { env, signal, ...opts });
  const rootDir = join(outDir, 'rootfs.d');
  const initrdDir = join(outDir, 'initrd.d');
  const kernelPath = join(outDir, ARTIFACT_NAMES.kernel);
  const initrdPath = join(outDir, ARTIFACT_NAMES.initrd);
  const rootfsPath = join(outDir, ARTIFACT_NAMES.rootfs);
  let stepIndex = 0;
  const stepSeconds: ImageArtifacts['stepSeconds'] = [];
  let stepStarted = Date.now();
  const endStep = () => {
    const last = BUILD_STEPS[stepIndex - 1];
    if (last) stepSeconds.push({ step: last, seconds: Math.round((Date.now() - stepStarted) / 100) / 10 });
    stepStarted = Date.now();
  };
  const step = (name: (typeof BUILD_STEPS)[number], detail?: string) => {
    if (signal?.aborted) throw cancelled('image build cancelled');
    endStep();
    stepIndex += 1;
    deps.log.info({ step: name, index: stepIndex, total: BUILD_STEPS.length, detail }, 'image build step');
    onStep({ name, index: stepIndex, total: BUILD_STEPS.length, ...(detail ? { detail } : {}) });
  };
  const logLines = (chunk: string) => {
    for (const l of chunk.split('\n')) if (l.trim()) deps.log.debug(l.trimEnd());
  };
  const host = procHost((cmd, args, opts = {}) => deps.run(cmd, args, { env, ...opts }));
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

    step('bootstrap rootfs', `${params.suite} from ${params.mirror}`);
    const aptCacheDir = params.aptCacheDir && !/\s/.test(params.aptCacheDir) ? params.aptCacheDir : undefined;
    if (aptCacheDir) await mkdir(aptCacheDir, { recursive: true, mode: 0o700 });
    await run('mmdebstrap', mmdebstrapArgs({ ...params, aptCacheDir, targetDir: rootDir }), { onOutput: logLines });

    step('install mise');
    const mise = deps.miseBinary ?? resolveMiseBinary();
    // Copied as is: a stripped mise segfaults.
    await copyFile(mise, join(rootDir, 'usr/local/bin/mise'));
    await chmod(join(rootDir, 'usr/local/bin/mise'), 0o755);
    await mkdir(join(rootDir, dirname(GUEST_PATHS.agent)), { recursive: true });
    await copyFile(deps.agentBundle ?? resolveAgentBundle(), join(rootDir, GUEST_PATHS.agent));
    await chmod(join(rootDir, GUEST_PATHS.agent), 0o644);
    const spawner = await compileSpawner(join(rootDir, GUEST_PATHS.spawner), run);
    if (!spawner.ok) deps.log.warn({ reason: spawner.reason }, 'no banger-spawner in the image (the agent spawns with Node)');

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

    const du = await run('du', ['-s', '-x', '-B1', rootDir]);
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
    await run('mkfs.ext4', mkfsArgs(rootDir, rootfsPath, sizeMib), { onOutput: logLines });

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

/** Writes banger's init, sshd and shell configuration into the tree and trims what guests never use. */
async function configureRootfs(rootDir: string, params: ImageBuildParams, run: CommandRunner): Promise<void> {
  const at = (p: string) => join(rootDir, p);
  await rm(at('etc/resolv.conf'), { force: true });
  for (const f of guestFiles()) {
    await mkdir(dirname(at(f.path)), { recursive: true });
    await rm(at(f.path), { force: true });
    await writeFile(at(f.path), f.content, { mode: f.mode });
    await chmod(at(f.path), f.mode);
  }
  if (await exists(at('usr/sbin/dockerd')))
    for (const f of dockerGuestFiles()) {
      await mkdir(dirname(at(f.path)), { recursive: true });
      await writeFile(at(f.path), f.content, { mode: f.mode });
      await chmod(at(f.path), f.mode);
    }
  await rm(at(GUEST_PATHS.init), { force: true });
  await symlink('/bin/busybox', at(GUEST_PATHS.init));
  await writeFile(at('etc/banger-image'), `${params.name}\n`);

  // Each VM gets its own host key through the seed disk.
  for (const n of await readdir(at('etc/ssh')))
    if (n.startsWith('ssh_host_')) await rm(at(`etc/ssh/${n}`), { force: true });
  // A client's LANG/LC_* would name locales the image does not have.
  const sshdConfig = at('etc/ssh/sshd_config');
  if (await exists(sshdConfig)) {
    const text = await readFile(sshdConfig, 'utf8');
    await writeFile(sshdConfig, text.replace(/^AcceptEnv\b.*$/gm, '# AcceptEnv: disabled by banger'));
  }
  const envFile = at('etc/environment');
  const envText = (await exists(envFile)) ? await readFile(envFile, 'utf8') : '';
  await writeFile(envFile, withGuestEnvironment(envText));
  await rm(at('etc/machine-id'), { force: true });
  await writeFile(at('etc/machine-id'), '');

  // The image's /root dotfiles over /etc/skel, for the first boot of an empty work disk.
  await mkdir(at(ROOT_SKEL_DIR), { recursive: true });
  await run('cp', ['-a', `${at('etc/skel')}/.`, `${at(ROOT_SKEL_DIR)}/`]);
  await run('cp', ['-a', `${at('root')}/.`, `${at(ROOT_SKEL_DIR)}/`]);
}

async function buildInitrd(
  imageName: string,
  rootDir: string,
  initrdDir: string,
  initrdPath: string,
  kernelVersion: string,
  run: CommandRunner,
): Promise<void> {
  const modDir = join(rootDir, 'lib/modules', kernelVersion);
  const readOr = async (p: string) => ((await exists(p)) ? readFile(p, 'utf8') : '');
  const modules = resolveModules(
    await readFile(join(modDir, 'modules.dep'), 'utf8'),
    await readOr(join(modDir, 'modules.builtin')),
    INITRD_MODULES,
    { image: imageName, kernelVersion },
  );
  for (const d of ['bin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules'])
    await mkdir(join(initrdDir, d), { recursive: true });
  await copyFile(join(rootDir, 'bin/busybox'), join(initrdDir, 'bin/busybox'));
  await chmod(join(initrdDir, 'bin/busybox'), 0o755);
  const files: string[] = [];
  for (const m of modules) {
    const src = join(modDir, m.path);
    const dst = join(initrdDir, 'lib/modules', `${m.name}.ko`);
    const decompressor = m.path.endsWith('.xz')
      ? 'xz'
      : m.path.endsWith('.zst')
        ? 'zstd'
        : m.path.endsWith('.gz')
          ? 'gzip'
          : undefined;
    if (decompressor) await run('sh', ['-c', `${decompressor} -dc "$1" > "$2"`, 'sh', src, dst]);
    else await copyFile(src, dst);
    files.push(`${m.name}.ko`);
  }
  await writeFile(join(initrdDir, 'init'), initrdInit(files), { mode: 0o755 });
  await chmod(join(initrdDir, 'init'), 0o755);
  await rm(initrdPath, { force: true });
  await run('bash', cpioArgs(initrdDir, initrdPath));
}
