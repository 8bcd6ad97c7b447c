import { readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { VmRecord } from '../../store/repos/vms.js';
import type { Accel, VmmName } from '../../vmm/driver.js';

/**
 * How snapshots are kept on the host: one directory per snapshot under $BANGER_HOME/snapshots/<id>/ with
 *   snapshot.json  this record (written last: a directory without it is a snapshot that was never finished)
 *   state.bin      the VMM's device state and memory
 *   root.qcow2     the source VM's root overlay as it was, frozen (its backing is the image)
 *   work.img       the source VM's work disk as it was, frozen (raw ext4, or a qcow2 over an older snapshot)
 * A snapshot in the making is `.partial-<id>`, renamed to `<id>` once whole. Every VM whose disks are layered
 * on a snapshot's files names it in its own directory's `snapshots.json` (the source VM, restored VMs).
 */

export interface SnapshotRecord {
  id: string;
  name: string;
  sourceVmId: string;
  sourceVmName: string;
  vmm: VmmName;
  accel: Accel;
  imageId: string;
  /** The image's kernel checksum and rootfs file size+mtime when it was taken: a rebuilt image is refused. */
  imageKey: string;
  vcpus: number;
  memoryMib: number;
  diskSizeMib: number;
  agent: boolean;
  egress: boolean;
  mac: string;
  workspace: VmRecord['workspace'];
  workFormat: 'qcow2' | 'raw';
  /** Snapshots this one's frozen disks are layered on (taken of a VM restored from them). */
  dependsOn: string[];
  createdAt: string;
  pausedMs: number;
}

export const SNAPSHOT_FILES = {
  record: 'snapshot.json',
  state: 'state.bin',
  root: 'root.qcow2',
  work: 'work.img',
} as const;

/** The file in a VM's directory that lists the snapshots its disks are layered on. */
export const VM_SNAPSHOTS_FILE = 'snapshots.json';
/** In a VM's directory until its first start: the state it resumes instead of booting. */
export const VM_RESTORE_FILE = 'restore.json';

export interface RestoreMarker {
  snapshotId: string;
  statePath: string;
  accel: Accel;
  agent: boolean;
  sourceVmName: string;
  mac: string;
}

export async function readSnapshots(dir: string): Promise<SnapshotRecord[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: SnapshotRecord[] = [];
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const rec = await readJson<SnapshotRecord>(join(dir, n, SNAPSHOT_FILES.record));
    if (rec) out.push(rec);
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/** Writes JSON atomically (temporary file + rename). */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(`${path}.tmp`, JSON.stringify(value, null, 2) + '\n', { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

/** The snapshot ids a VM's disks are layered on ([] when none). */
export async function vmSnapshotIds(vmDir: string): Promise<string[]> {
  return (await readJson<string[]>(join(vmDir, VM_SNAPSHOTS_FILE))) ?? [];
}

export async function addVmSnapshotIds(vmDir: string, ids: string[]): Promise<void> {
  const cur = await vmSnapshotIds(vmDir);
  await writeJson(join(vmDir, VM_SNAPSHOTS_FILE), [...new Set([...cur, ...ids])]);
}
