import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { ProgressEvent } from '../../../protocol/common.js';
import { dnsName } from '../../../protocol/names.js';
import type { VmPaths } from '../../../shared/paths.js';
import type { CommandRunner } from '../../../shared/command.js';
import { generateEd25519 } from '../../guest/keys.js';
import { SPACE_NEEDED, asNoSpace, ensureFreeSpace, fileUse, makeWorkDisk, type FreeSpace } from './disks.js';
import type { VmmDriver } from '../../vmm/driver.js';

export interface VmFilesOptions {
  vp: VmPaths;
  name: string;
  rootfsPath: string;
  diskSizeMib: number;
  driver: VmmDriver;
  run: CommandRunner;
  progress: (ev: ProgressEvent) => void;
  /** Free bytes of a path's filesystem (statfs; injected by tests). */
  freeSpace?: FreeSpace;
}

/**
 * Makes a new VM's files, reporting each named step: the root disk (a qcow2 overlay over the image where the
 * driver takes one, else a sparse copy), the work disk (sparse ext4) and the VM's own SSH host key. The
 * known_hosts entry is written last: reconcile takes a VM without it for a create that never finished.
 * Checks the host's free space first (SPACE_NEEDED.create) and turns a full disk met on the way into
 * ResourceExhausted naming the directory; the caller removes what was made.
 */
export async function makeVmFiles(o: VmFilesOptions, signal?: AbortSignal): Promise<void> {
  const { vp } = o;
  const what = `create VM '${o.name}'`;
  // Without qcow2 the root disk is a sparse copy of the image: it costs what the image's blocks cost.
  const rootCopy = o.driver.features.has('qcow2') ? 0 : (fileUse(o.rootfsPath)?.hostBytes ?? 0);
  const needed = SPACE_NEEDED.create(o.diskSizeMib) + rootCopy;
  try {
    await mkdir(vp.dir, { recursive: true, mode: 0o700 });
    await ensureFreeSpace(vp.dir, needed, what, o.freeSpace);
    await makeFiles(o, signal);
  } catch (e) {
    throw asNoSpace(e, vp.dir, what, needed);
  }
}

async function makeFiles(o: VmFilesOptions, signal?: AbortSignal): Promise<void> {
  const { vp, run } = o;
  const step = (step: string, index: number) => o.progress({ kind: 'step', step, index, total: 3 });
  step('create root disk', 1);
  if (o.driver.features.has('qcow2')) {
    // Copy-on-write overlay: creating it never copies the image.
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', o.rootfsPath, '-F', 'raw', vp.rootDisk], { signal });
  } else {
    await run('cp', ['--sparse=always', '--reflink=auto', o.rootfsPath, vp.rootDiskRaw], { signal });
  }
  step('create work disk', 2);
  await makeWorkDisk(run, vp.workDisk, o.diskSizeMib, signal);
  step('generate host key', 3);
  await writeHostKey(vp, o.name);
}

/**
 * A new SSH host key for VM `name` and the known_hosts line that pins it (written last: reconcile takes a
 * VM without it for a create that never finished).
 */
export async function writeHostKey(
  vp: { hostKeyPrivate: string; hostKeyPublic: string; knownHosts: string },
  name: string,
): Promise<void> {
  const hostKey = generateEd25519(dnsName(name));
  await writeFile(vp.hostKeyPrivate, hostKey.privateKey, { mode: 0o600 });
  await writeFile(vp.hostKeyPublic, hostKey.publicKey + '\n', { mode: 0o644 });
  await writeFile(vp.knownHosts, knownHostsLine(name, hostKey.publicKey), { mode: 0o644 });
}

const knownHostsLine = (name: string, publicKey: string) => `${dnsName(name)} ${publicKey.trim()}\n`;

/** Pins the VM's existing host key under a new name (a warm pool's VM given the user's name). */
export async function repinHostKey(vp: { hostKeyPublic: string; knownHosts: string }, name: string): Promise<void> {
  const publicKey = await readFile(vp.hostKeyPublic, 'utf8');
  await writeFile(`${vp.knownHosts}.tmp`, knownHostsLine(name, publicKey), { mode: 0o644 });
  await rename(`${vp.knownHosts}.tmp`, vp.knownHosts);
}

/**
 * Removes a deleted VM's directory and, in between, its record (`forgetRecord`). The directory goes out of
 * the way in one rename before the record goes, and is removed after: a daemon killed at any point leaves
 * either the whole VM or a directory without a record, which reconcile removes; never a record over half a
 * directory.
 */
export async function removeVmFiles(dir: string, forgetRecord: () => void): Promise<void> {
  const doomed = `${dir}.deleting`;
  await rename(dir, doomed).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  forgetRecord();
  await rm(doomed, { recursive: true, force: true });
}
