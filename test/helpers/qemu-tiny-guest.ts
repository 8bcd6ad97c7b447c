/**
 * A real, fast-booting guest for QEMU tests: Debian's cloud kernel (fetched once with apt-get download into
 * a cache dir) and a tiny initrd made here (busybox-static from the host + a few virtio modules + an /init
 * script the test writes).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PROBE_ARG } from '../../src/daemon/guest/init/contract.js';
import { PROBE_MARKER } from '../../src/daemon/vmm/accel.js';

const run = promisify(execFile);

export const TEST_CACHE_DIR = process.env.BANGER_TEST_CACHE ?? '/var/cache/banger-test';
const MODULES = ['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'virtio_console'];

export interface TestKernel {
  kernel: string;
  /** Directory holding `<name>.ko` for each of MODULES. */
  modulesDir: string;
  release: string;
}

async function kernelPackage(): Promise<string> {
  const depends = async () =>
    (await run('apt-cache', ['depends', 'linux-image-cloud-amd64'])).stdout.match(/Depends: (linux-image-\S+)/)?.[1];
  let pkg = await depends().catch(() => undefined);
  if (!pkg) {
    await run('apt-get', ['update', '-qq']);
    pkg = await depends();
  }
  if (!pkg) throw new Error('apt-cache knows no linux-image-cloud-amd64: cannot fetch a test kernel');
  return pkg;
}

/** The Debian cloud kernel, downloaded and extracted once into TEST_CACHE_DIR. */
export async function ensureTestKernel(): Promise<TestKernel> {
  if (process.env.BANGER_TEST_KERNEL && process.env.BANGER_TEST_MODULES)
    return { kernel: process.env.BANGER_TEST_KERNEL, modulesDir: process.env.BANGER_TEST_MODULES, release: 'custom' };
  await mkdir(TEST_CACHE_DIR, { recursive: true });
  const existing = (await readdir(TEST_CACHE_DIR)).find((n) => n.startsWith('kernel-') && !n.endsWith('.tmp'));
  if (existing) {
    const dir = join(TEST_CACHE_DIR, existing);
    return { kernel: join(dir, 'vmlinuz'), modulesDir: dir, release: existing.slice('kernel-'.length) };
  }
  const pkg = await kernelPackage();
  const release = pkg.replace(/^linux-image-/, '');
  const tmp = await mkdtemp(join(TEST_CACHE_DIR, `kernel-${release}.`));
  try {
    await run('apt-get', ['download', pkg], { cwd: tmp });
    const deb = (await readdir(tmp)).find((n) => n.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    const x = join(tmp, 'x');
    await mkdir(x);
    await run('sh', [
      '-c',
      `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*' ${MODULES.map((m) => `'*/${m}.ko'`).join(' ')}`,
      'sh',
      join(tmp, deb),
      x,
    ]);
    const vmlinuz = (await readdir(join(x, 'boot'))).find((n) => n.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`no /boot/vmlinuz-* in ${deb}`);
    await rename(join(x, 'boot', vmlinuz), join(tmp, 'vmlinuz'));
    const found = (await run('find', [x, '-name', '*.ko'])).stdout.trim().split('\n');
    for (const f of found) await rename(f, join(tmp, f.slice(f.lastIndexOf('/') + 1)));
    await rm(x, { recursive: true });
    await rm(join(tmp, deb));
    const final = join(TEST_CACHE_DIR, `kernel-${release}`);
    await rename(tmp, final).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e; // another test process won the race
      await rm(tmp, { recursive: true, force: true });
    });
    return { kernel: join(final, 'vmlinuz'), modulesDir: final, release };
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

/** An initramfs archive in the kernel's "newc" cpio format. */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }] as CpioEntry[]) {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const header =
      '070701' +
      [ino++, e.mode, 0, 0, 1, 0, data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0]
        .map(hex)
        .join('');
    parts.push(Buffer.from(header), name, pad4(110 + name.length), data, pad4(data.length));
  }
  return Buffer.concat(parts);
}

/**
 * Writes an initrd at `path` whose /init is `script` (run by busybox sh; `$B` is /bin/busybox and the
 * virtio modules sit in /lib/<name>.ko).
 */
export async function writeTinyInitrd(path: string, script: string, kernel?: TestKernel): Promise<void> {
  const entries: CpioEntry[] = [
    { name: 'bin', mode: 0o40755 },
    { name: 'dev', mode: 0o40755 },
    { name: 'dev/console', mode: 0o20600, rdev: [5, 1] },
    { name: 'proc', mode: 0o40755 },
    { name: 'sys', mode: 0o40755 },
    { name: 'lib', mode: 0o40755 },
    { name: 'bin/busybox', mode: 0o100755, data: await readFile('/bin/busybox') },
    { name: 'init', mode: 0o100755, data: Buffer.from(`#!/bin/busybox sh\nB=/bin/busybox\n${script}\n`) },
  ];
  if (kernel)
    for (const m of MODULES) {
      const ko = join(kernel.modulesDir, `${m}.ko`);
      if (existsSync(ko)) entries.push({ name: `lib/${m}.ko`, mode: 0o100644, data: await readFile(ko) });
    }
  await writeFile(path, cpioNewc(entries));
}

/** An initrd that does what banger's does in probe mode: prints the probe marker when the command line asks, powers off. */
export async function writeProbeInitrd(path: string): Promise<void> {
  await writeTinyInitrd(path, ['$B mount -t proc proc /proc', `$B grep -q ${PROBE_ARG} /proc/cmdline && echo ${PROBE_MARKER}`, '$B poweroff -f'].join('\n'));
}

/** Kernel options that avoid the random early-boot hangs seen under TCG here (see HOST-FACTS.md). */
export async function tscCmdline(): Promise<string> {
  const mhz = (await readFile('/proc/cpuinfo', 'utf8')).match(/cpu MHz\s*:\s*([\d.]+)/)?.[1];
  return mhz ? `tsc_early_khz=${Math.round(Number(mhz) * 1000)} tsc=reliable` : '';
}

/** Whether QEMU is installed; the reason to print when it is not. */
export function qemuMissingReason(): string | undefined {
  return existsSync('/usr/bin/qemu-system-x86_64') ||
    process.env.PATH?.split(':').some((d) => existsSync(join(d, 'qemu-system-x86_64')))
    ? undefined
    : 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 qemu-utils)';
}
