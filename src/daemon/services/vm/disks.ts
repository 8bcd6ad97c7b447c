import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { statfs } from 'node:fs/promises';
import { BangerError, ErrorCode, invalidArgument, isBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';

/**
 * The work disk: a sparse ext4 file that costs the host what it holds, grown (never shrunk) on the host while
 * its VM is stopped; and the host disk space checks every step that writes under BANGER_HOME makes first.
 */

const MIB = 1024 * 1024;

/** The sizes a VM may be given, checked the same way by create and set. */
export const MACHINE_LIMITS = { minCpus: 1, maxCpus: 64, minMemoryMib: 128, minDiskMib: 64 } as const;

/** InvalidArgument for a size outside MACHINE_LIMITS; the flag names are the CLI's. */
export function checkMachineSizes(s: { cpus?: number; memoryMib?: number; diskSizeMib?: number }): void {
  const { minCpus, maxCpus, minMemoryMib, minDiskMib } = MACHINE_LIMITS;
  if (s.cpus !== undefined && (!Number.isInteger(s.cpus) || s.cpus < minCpus || s.cpus > maxCpus))
    throw invalidArgument(`--cpus must be ${minCpus}..${maxCpus}, got ${s.cpus}`);
  if (s.memoryMib !== undefined && (!Number.isInteger(s.memoryMib) || s.memoryMib < minMemoryMib))
    throw invalidArgument(`--memory must be at least ${minMemoryMib} MiB, got ${s.memoryMib}`);
  if (s.diskSizeMib !== undefined && (!Number.isInteger(s.diskSizeMib) || s.diskSizeMib < minDiskMib))
    throw invalidArgument(`--disk-size must be at least ${minDiskMib} MiB, got ${s.diskSizeMib}`);
}

/**
 * mkfs.ext4 arguments for a work disk. `lazy_journal_init=1` leaves the journal unwritten (zeroing it would
 * cost 512 MiB of host disk at 64G); `lazy_itable_init=0` has mkfs clear the inode tables now, which on a sparse
 * file punches holes instead of writing zeros, so the guest kernel's lazyinit thread does not later write them
 * out in full. A 64G disk then costs a few MiB on the host and is made in milliseconds.
 */
export function workDiskMkfsArgs(path: string): string[] {
  return ['-q', '-F', '-L', 'work', '-E', 'root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1', path];
}

/** The file in a VM's directory naming its current root and work disk files, once a snapshot moved them. */
export const ACTIVE_DISKS_FILE = 'disks.json';

/**
 * The files a VM's root and work disks are now: `root.qcow2` and `work.ext4` until a snapshot puts the VM onto
 * new overlays (`root-<snapshot>.qcow2`...), named in disks.json. A disk file's path is never reused for another
 * file: QEMU reopens a backing file by the name it opened it with.
 */
export function activeDisks(vp: { dir: string; rootDisk: string; workDisk: string }): { root: string; work: string } {
  try {
    const j = JSON.parse(readFileSync(join(vp.dir, ACTIVE_DISKS_FILE), 'utf8')) as { root?: string; work?: string };
    return {
      root: j.root ? join(vp.dir, j.root) : vp.rootDisk,
      work: j.work ? join(vp.dir, j.work) : vp.workDisk,
    };
  } catch {
    return { root: vp.rootDisk, work: vp.workDisk };
  }
}

/**
 * The format of a disk file by its first bytes: a snapshot turns a VM's raw work disk into a qcow2 overlay over
 * the frozen file (see services/snapshot), so the format is read from the file, not assumed.
 */
export function diskFormat(path: string): 'qcow2' | 'raw' {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const magic = Buffer.alloc(4);
    readSync(fd, magic, 0, 4, 0);
    return magic.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? 'qcow2' : 'raw';
  } catch {
    return 'raw';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Makes a sparse ext4 work disk of `sizeMib` at `path`. */
export async function makeWorkDisk(run: CommandRunner, path: string, sizeMib: number, signal?: AbortSignal): Promise<void> {
  await run('truncate', ['-s', `${sizeMib}M`, path], { signal });
  await run('mkfs.ext4', workDiskMkfsArgs(path), { signal });
}

/**
 * Grows a stopped VM's work disk file and its filesystem to `toMib`. Shrinking is refused (InvalidArgument).
 * Each step leaves a usable disk: a file longer than its filesystem mounts as before, and resize2fs is the last
 * step, so a failure at any point leaves the old filesystem intact; the caller records the new size only after
 * this returns, and running it again with the same size finishes the job.
 */
export async function growWorkDisk(
  run: CommandRunner,
  path: string,
  fromMib: number,
  toMib: number,
  signal?: AbortSignal,
): Promise<void> {
  if (toMib < fromMib)
    throw invalidArgument(
      `the work disk cannot shrink (it is ${fromMib} MiB; asked for ${toMib} MiB)`,
      `give --disk-size ${fromMib}M or more`,
    );
  // Only ever lengthen the file: one left longer by an interrupted grow may hold a filesystem that big already.
  if (statSync(path).size < toMib * MIB) await run('truncate', ['-s', `${toMib}M`, path], { signal });
  // resize2fs insists on a freshly checked filesystem; -p repairs what is safe (exit 1: repaired, fine).
  const fsck = await run('e2fsck', ['-f', '-p', path], { signal, allowFailure: true });
  if (fsck.code > 1)
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `the work disk ${path} has filesystem errors e2fsck could not repair (exit ${fsck.code}); it was not grown`,
      { hint: `run \`e2fsck -f ${path}\` by hand, then try again` },
    );
  await run('resize2fs', [path, `${toMib}M`], { signal });
}

export interface DiskUse {
  id: 'root' | 'work';
  path: string;
  /** The disk's size as the guest sees it (the file's length; a qcow2 overlay's is its header's). */
  virtualBytes: number;
  /** What it costs the host: allocated blocks. */
  hostBytes: number;
}

/** The disk file's length and its allocated bytes on the host; null when it does not exist. */
export function fileUse(path: string): { sizeBytes: number; hostBytes: number } | null {
  try {
    const st = statSync(path);
    return { sizeBytes: st.size, hostBytes: st.blocks * 512 };
  } catch {
    return null;
  }
}

/**
 * Free space the host must have before each step that writes under BANGER_HOME, in bytes. Explicit estimates,
 * not measurements: what banger itself writes plus headroom for the first writes of the guest.
 * - create: the root overlay (a qcow2 header, ~200 KiB), the work disk's ext4 metadata (~0.7 MiB at 1 GiB,
 *   ~5 MiB at 64 GiB: 1 MiB per 8 GiB is generous), the host key; plus 8 MiB. A driver without qcow2 adds the
 *   image's allocated bytes (its root disk is a sparse copy; files.ts adds it).
 * - start: the seed (<1 MiB), the console log (capped at 2 MiB with its rotation), the VMM's log, and the
 *   guest's first writes to the overlay and the work disk while it boots: 32 MiB.
 */
export const SPACE_NEEDED = {
  create: (diskSizeMib: number) => (8 + Math.ceil(diskSizeMib / 8192)) * MIB,
  start: 32 * MIB,
} as const;

/** `statfs` of a path's filesystem: bytes an unprivileged writer may still use. Injectable for tests. */
export type FreeSpace = (path: string) => Promise<number>;

export const freeSpace: FreeSpace = async (path) => {
  const s = await statfs(path);
  return s.bavail * s.bsize;
};

/** ResourceExhausted (exit 71) unless the filesystem holding `dir` has `neededBytes` free. */
export async function ensureFreeSpace(dir: string, neededBytes: number, what: string, free: FreeSpace = freeSpace): Promise<void> {
  const have = await free(dir);
  if (have < neededBytes) throw noSpace(dir, what, neededBytes, have);
}

export function noSpace(dir: string, what: string, neededBytes: number | null, freeBytes: number | null, cause?: unknown): BangerError {
  const need = neededBytes === null ? '' : `: it needs ${mib(neededBytes)} free`;
  const have = freeBytes === null ? '' : `, has ${mib(freeBytes)}`;
  return new BangerError(ErrorCode.ResourceExhausted, `not enough disk space in ${dir} to ${what}${need}${have}`, {
    hint: `free space on that filesystem (or set BANGER_HOME to a larger one) and try again`,
    cause,
  });
}

/** An error that says the host disk is full (an ENOSPC, or a host command that reported it). */
export function isNoSpace(e: unknown): boolean {
  if (isBangerError(e) && e.code === ErrorCode.ResourceExhausted) return false;
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  const message = e instanceof Error ? e.message : String(e);
  return /No space left on device|Disk quota exceeded|Could not allocate block|ENOSPC/.test(message);
}

/** `e` as ResourceExhausted naming `dir` when it is a full disk; otherwise `e` itself. */
export function asNoSpace(e: unknown, dir: string, what: string, neededBytes: number | null = null): unknown {
  return isNoSpace(e) ? noSpace(dir, what, neededBytes, null, e) : e;
}

function mib(bytes: number): string {
  return `${(bytes / MIB).toFixed(bytes < 10 * MIB ? 1 : 0)} MiB`;
}
