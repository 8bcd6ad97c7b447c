import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { SnapshotInfo } from '../../../protocol/snapshot.js';
import type { ImageService, ReadyImage } from '../image/service.js';
import { fileUse } from '../vm/disks.js';
import { SNAPSHOT_FILES, holdsSavedState, type SnapshotRecord } from './store.js';

/** What `snapshot list` and `show` report of the snapshot `s` kept in `dir`, used by the VMs `dependents`. */
export function snapshotInfo(
  s: SnapshotRecord,
  dir: string,
  dependents: string[],
  images: Pick<ImageService, 'byIdReady'>,
): SnapshotInfo {
  const bytes = Object.values(SNAPSHOT_FILES).reduce((n, f) => n + (fileUse(join(dir, f))?.hostBytes ?? 0), 0);
  let image = s.imageId;
  try {
    image = images.byIdReady(s.imageId).name;
  } catch {
    /* the image is gone: its id says which it was */
  }
  return {
    id: s.id,
    name: s.name,
    sourceVm: s.sourceVmName,
    vmm: s.vmm,
    image,
    network: s.network ?? 'loopback',
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    diskSizeMib: s.diskSizeMib,
    createdAt: s.createdAt,
    pausedMs: s.pausedMs,
    hostBytes: bytes,
    dir,
    dependents,
    restorable: holdsSavedState(s),
    madeByFork: s.madeBy === 'fork',
  };
}

/** What identifies an image's contents well enough to refuse restoring onto a rebuilt one. */
export async function imageKey(image: ReadyImage): Promise<string> {
  const st = await stat(image.rootfsPath);
  return `${image.kernelSha256}:${st.size}:${Math.round(st.mtimeMs)}`;
}
