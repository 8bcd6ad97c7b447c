/**
 * banger's own changes to a bootstrapped root filesystem tree (init, sshd, environment, /root skeleton) and
 * the initrd made from it (BusyBox plus the few kernel modules needed to mount the root disk).
 */
import { chmod, copyFile, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { CommandRunner } from '../../../shared/command.js';
import { ROOT_SKEL_DIR } from '../../guest/init/contract.js';
import { initrdInit } from '../../guest/init/initrd.js';
import { GUEST_PATHS, guestFiles, withGuestEnvironment } from '../../guest/init/scripts.js';
import { dockerGuestFiles } from '../../guest/init/docker.js';
import { INITRD_MODULES, resolveModules } from './modules.js';

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

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes banger's init, sshd and shell configuration into the tree and trims what guests never use. */
export async function configureRootfs(rootDir: string, params: { name: string }, run: CommandRunner): Promise<void> {
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

export async function buildInitrd(
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
