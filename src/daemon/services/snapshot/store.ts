import { readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NetworkMode } from '../../../protocol/common.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { Accel, SavedRam, SavedState, VmmName } from '../../vmm/driver.js';

/**
 * How snapshots are kept on the host: one directory per snapshot under $BANGER_HOME/snapshots/<id>/ with
 *   snapshot.json  this record (written last: a directory without it is a snapshot that was never finished)
 *   state.bin      the VMM's device state (and the RAM, when `ram` says 'stream')
 *   memory.ram     the guest's RAM (when `ram` is 'file'): sparse, mapped copy-on-write by restored VMs
 *   root.qcow2     the source VM's root overlay as it was, frozen (its backing is the image)
 *   work.img       the source VM's work disk as it was, frozen (raw ext4, or a qcow2 over an older snapshot)
 * A snapshot in the making is `.partial-<id>`, renamed to `<id>` once whole. Its record is written there (marked
 * `unfinished`) before the source VM is moved onto its new layers, and again, whole, last: a partial directory
 * with a record is one whose disks the source VM may already be layered on (reconcile keeps them: service.ts). Every VM whose disks are layered
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
  /** The source VM's networking, which VMs made from it keep (absent in snapshots from before tap ones: loopback). */
  network?: NetworkMode;
  workspace: VmRecord['workspace'];
  workFormat: 'qcow2' | 'raw';
  /**
   * 'raw' for a snapshot whose disks are copies made while its VM was paused (a VMM that cannot move a running
   * VM onto new layers: Firecracker): its root is `root.img`, and no VM is layered on it. Absent: 'qcow2'.
   */
  rootFormat?: 'qcow2' | 'raw';
  /** Snapshots this one's frozen disks are layered on (taken of a VM restored from them). */
  dependsOn: string[];
  createdAt: string;
  pausedMs: number;
  /** Where the RAM was saved (driver.ts); absent in snapshots from before RAM files: 'stream-machine'. */
  ram?: SavedRam;
  /**
   * The source VM had the bulk port (daemon/guest/bulk.ts): VMs resumed from it get the port too, as the saved
   * device state needs. Absent (snapshots from before the port, or of a VM started before it): no port.
   */
  bulkPort?: true;
  /** Set on what reconcile kept of a snapshot a killed daemon did not finish: its disks only (service.ts). */
  unfinished?: true;
  /**
   * 'fork': taken by `vm fork` for its copies, not asked for by name, so it is deleted once nothing uses it
   * (SnapshotService.collectForks). Absent: the user's, kept until they delete it.
   */
  madeBy?: 'fork';
  /**
   * A fork's snapshot whose memory and device state went once its copies ran (SnapshotService.dropForkMemory): it
   * holds the disks the source and the copies are layered on, and cannot be restored.
   */
  memoryDropped?: true;
}

export const SNAPSHOT_FILES = {
  record: 'snapshot.json',
  state: 'state.bin',
  memory: 'memory.ram',
  root: 'root.qcow2',
  /** The root disk of a snapshot by copies (rootFormat 'raw'). */
  rootRaw: 'root.img',
  work: 'work.img',
} as const;

/**
 * Whether the snapshot still holds the saved memory and device state a VM resumes from (and so can be restored):
 * not one reconcile kept unfinished, nor a fork's that let them go.
 */
export function holdsSavedState(s: Pick<SnapshotRecord, 'unfinished' | 'memoryDropped'>): boolean {
  return s.unfinished !== true && s.memoryDropped !== true;
}

/** The snapshots whose disks are layered on snapshot `id` (each records it in `dependsOn`). */
export function layeredOn(all: SnapshotRecord[], id: string): SnapshotRecord[] {
  return all.filter((o) => o.dependsOn.includes(id));
}

/** The files a snapshot moves its source VM onto (in the VM's directory): never a name used before. */
export function overlayNames(snapshotId: string): { root: string; work: string } {
  return { root: `root-${snapshotId}.qcow2`, work: `work-${snapshotId}.qcow2` };
}

/** The file in a VM's directory that lists the snapshots its disks are layered on. */
export const VM_SNAPSHOTS_FILE = 'snapshots.json';
/** In a VM's directory until its first start: the state it resumes instead of booting. */
export const VM_RESTORE_FILE = 'restore.json';

export interface RestoreMarker {
  snapshotId: string;
  /** The saved state to resume (absent in markers from before RAM files: see `markerState`). */
  state?: SavedState;
  /** The state file, in markers written before `state`. */
  statePath?: string;
  accel: Accel;
  agent: boolean;
  /** The snapshot's bulkPort. */
  bulkPort?: true;
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

/** The saved state a restore marker names (an older marker names only its stream, which held the RAM). */
export function markerState(m: RestoreMarker): SavedState {
  return m.state ?? { statePath: m.statePath ?? '', ramPath: '', ram: 'stream-machine' };
}

/** The saved state of a snapshot in `dir`. */
export function snapshotState(s: SnapshotRecord, dir: string): SavedState {
  return { statePath: join(dir, SNAPSHOT_FILES.state), ramPath: join(dir, SNAPSHOT_FILES.memory), ram: s.ram ?? 'stream-machine' };
}
