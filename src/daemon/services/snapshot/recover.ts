import { readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { Logger } from '../../../shared/logger.js';
import type { Paths } from '../../../shared/paths.js';
import { ACTIVE_DISKS_FILE } from '../vm/disks.js';
import type { SnapshotVms } from './service.js';
import { SNAPSHOT_FILES, addVmSnapshotIds, overlayNames, readJson, writeJson, type SnapshotRecord } from './store.js';

export interface RecoverDeps {
  paths: Paths;
  vms: SnapshotVms;
  log: Logger;
}

/**
 * What a killed daemon left of snapshots: deletions are finished. The source VM of a snapshot in the making
 * may have been left with its CPUs stopped (the daemon died between QMP `stop` and `cont`): it is resumed,
 * retried while the migration the daemon started is still writing (QEMU refuses `cont` until it ends). A snapshot in the making without a record
 * never touched its VM: it goes, with the overlays made for it. One with a record may have moved its VM onto
 * the overlays (whose backing files are its frozen disks) before the daemon died: its disks are kept as a
 * snapshot that cannot be restored (the saved memory may be partial), and the VM's disks.json names the
 * overlays. That is right whether or not QEMU switched: the frozen files are the same inodes as the VM's old
 * disk files, so an overlay QEMU never wrote shows exactly what QEMU wrote into them.
 */
export async function recoverSnapshots(d: RecoverDeps): Promise<void> {
  const dir = d.paths.snapshotsDir;
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    if (n.startsWith('.deleting-')) await rm(join(dir, n), { recursive: true, force: true });
    if (!n.startsWith('.partial-')) continue;
    const id = n.slice('.partial-'.length);
    const rec = await readJson<SnapshotRecord>(join(dir, n, SNAPSHOT_FILES.record)).catch(() => undefined);
    const vm = rec && d.vms.records().find((v) => v.id === rec.sourceVmId);
    // A snapshot by copies never touched its VM's disks (takeCopies): its partial directory just goes.
    if (!rec || !vm || rec.rootFormat === 'raw') {
      if (vm) await resumeSource(d, vm.name);
      for (const v of d.vms.records()) for (const f of Object.values(overlayNames(id))) await rm(join(v.dir, f), { force: true });
      await rm(join(dir, n), { recursive: true, force: true });
      continue;
    }
    await keepDisks(d, join(dir, n), vm);
    await resumeSource(d, vm.name);
  }
}

/** Starts the CPUs of a running VM that a snapshot stopped (a no-op for one that runs). */
async function resumeSource(d: RecoverDeps, name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await d.vms.withRunning(name, async (r) => r.driver.pausing?.resume(r.handle));
      return;
    } catch (e) {
      if (e instanceof BangerError && e.code === ErrorCode.FailedPrecondition) return; // not running: nothing to resume
      if (attempt >= 10) {
        d.log.warn({ vm: name, err: (e as Error).message }, 'could not resume a VM a snapshot had stopped');
        return;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Keeps an unfinished snapshot's disks (see recoverSnapshots): its VM moves onto the overlays over them. */
export async function keepDisks(d: RecoverDeps, partial: string, vm: { id: string; name: string; dir: string }): Promise<void> {
  const rec = (await readJson<SnapshotRecord>(join(partial, SNAPSHOT_FILES.record)))!;
  await writeJson(join(vm.dir, ACTIVE_DISKS_FILE), overlayNames(rec.id));
  await addVmSnapshotIds(vm.dir, [rec.id]);
  await writeJson(join(partial, SNAPSHOT_FILES.record), { ...rec, unfinished: true });
  await rename(partial, d.paths.snapshotDir(rec.id));
  d.log.warn({ vm: vm.name, snapshot: rec.name }, 'kept the disks of a snapshot that was not finished; it cannot be restored');
}
