import { alreadyExists } from '../../../errors/index.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import type { SnapshotInfo, VmForkParams } from '../../../protocol/snapshot.js';
import type { VmInfo } from '../../../protocol/vm.js';
import { validateVmName } from '../vm/names.js';
import type { RestoreSource } from './restore.js';

type Progress = (ev: ProgressEvent) => void;

/** What a fork uses of the snapshot and VM services. */
export interface ForkDeps {
  snapshots: {
    create(p: { vm: string; name: string; madeBy: 'fork' }, signal?: AbortSignal): Promise<SnapshotInfo>;
    source(id: string): Promise<RestoreSource>;
    show(id: string): Promise<SnapshotInfo>;
    dropForkMemory(id: string): Promise<void>;
  };
  vms: {
    /** Whether any VM (a pool's included) has this name. */
    nameTaken(name: string): boolean;
    create(opts: { name: string; restore: RestoreSource }, progress: Progress, signal?: AbortSignal): Promise<VmInfo>;
    start(name: string, progress: Progress, signal?: AbortSignal, opts?: { sync?: boolean }): Promise<VmInfo>;
    delete(name: string, opts: { force?: boolean }): Promise<unknown>;
  };
  /** Suffix of the fork's snapshot name (unique per fork of one VM). */
  stamp?: () => string;
}

/**
 * `vm fork VM --count N`: a snapshot of the running VM (paused only while it is taken), then N VMs
 * PREFIX-1..N restored from it side by side, each one's progress steps labelled with its name (they
 * interleave). All or nothing: a name in use is refused before anything is made, and when one copy fails the
 * others made by this fork are deleted, so the same command can be run again. The snapshot stays while the
 * source's disks (or a copy's) are layered on it, and goes with the last of them (SnapshotService.collectForks).
 */
export async function forkVm(d: ForkDeps, p: VmForkParams, progress: Progress, signal?: AbortSignal) {
  const prefix = p.name ?? `${p.vm}-fork`;
  const names = Array.from({ length: p.count }, (_, i) => `${prefix}-${i + 1}`);
  names.forEach((n) => validateVmName(n));
  const taken = names.filter((n) => d.vms.nameTaken(n));
  if (taken.length > 0)
    throw alreadyExists(
      `${taken.length === 1 ? 'a VM' : 'VMs'} named ${taken.map((n) => `'${n}'`).join(', ')} already ${taken.length === 1 ? 'exists' : 'exist'}`,
      `pick another --name, or delete ${taken.length === 1 ? 'it' : 'them'} first (\`banger vm delete --force ${taken.join(' ')}\`)`,
    );
  progress({ kind: 'step', step: 'snapshot', index: 1, total: 1, detail: p.vm });
  const stamp = d.stamp?.() ?? Date.now().toString(36);
  const snap = await d.snapshots.create({ vm: p.vm, name: `${prefix}-${stamp}`, madeBy: 'fork' }, signal);
  const source = await d.snapshots.source(snap.id);
  const made: string[] = [];
  const settled = await Promise.allSettled(
    names.map(async (name) => {
      const labelled: Progress = (ev) => progress(ev.kind === 'step' ? { ...ev, subject: name } : ev);
      const created = await d.vms.create({ name, restore: source }, labelled, signal);
      made.push(created.name);
      return d.vms.start(created.name, labelled, signal, { sync: false });
    }),
  );
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) for (const name of made) await d.vms.delete(name, { force: true }).catch(() => undefined);
  // Its copies run from the memory they mapped (or are gone): the snapshot keeps its disks only.
  await d.snapshots.dropForkMemory(snap.id);
  if (failed) throw failed.reason;
  return { snapshot: await d.snapshots.show(snap.id), vms: settled.map((s) => (s as PromiseFulfilledResult<VmInfo>).value) };
}
