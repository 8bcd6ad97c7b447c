import { randomBytes } from 'node:crypto';
import { link, mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, ErrorCode, alreadyExists, failedPrecondition, notFound } from '../../../errors/index.js';
import type { SnapshotInfo } from '../../../protocol/snapshot.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { Logger } from '../../../shared/logger.js';
import type { Paths } from '../../../shared/paths.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { VmmSnapshots } from '../../vmm/driver.js';
import type { ImageService, ReadyImage } from '../image/service.js';
import { KeyedMutex } from '../locks.js';
import { ACTIVE_DISKS_FILE, activeDisks, asNoSpace, diskFormat, ensureFreeSpace, fileUse } from '../vm/disks.js';
import { validateVmName } from '../vm/names.js';
import type { RunningVm } from '../vm/service.js';
import type { RestoreSource } from './restore.js';
import { virtualSize } from './restore.js';
import { imageKey, snapshotInfo } from './info.js';
import { keepDisks, recoverSnapshots } from './recover.js';
import {
  SNAPSHOT_FILES,
  VM_RESTORE_FILE,
  addVmSnapshotIds,
  holdsSavedState,
  layeredOn,
  overlayNames,
  readJson,
  readSnapshots,
  vmSnapshotIds,
  writeJson,
  type RestoreMarker,
  type SnapshotRecord,
} from './store.js';

const MIB = 1024 * 1024;

/** What the snapshot service needs of the VM service. */
export interface SnapshotVms {
  /** Runs `fn` on a running VM under its lifecycle lock (no start, stop or delete meanwhile). */
  withRunning<T>(name: string, fn: (r: RunningVm) => Promise<T>, signal?: AbortSignal): Promise<T>;
  records(): VmRecord[];
  /** Readies a running VM's guest for a snapshot its restores take their identity from (never rejects). */
  holdIdentity?(vm: VmRecord, signal?: AbortSignal): Promise<void>;
}

export interface SnapshotServiceDeps {
  paths: Paths;
  vms: SnapshotVms;
  images: Pick<ImageService, 'byIdReady'>;
  run: CommandRunner;
  log: Logger;
  now?: () => Date;
}

/** A snapshot's name, and what took it when not the user (SnapshotRecord.madeBy). */
interface Label {
  name: string;
  madeBy?: 'fork';
}

/**
 * `banger vm snapshot` and `banger snapshot`: saves a running VM (memory, device state, a point in time of
 * its disks, copy-on-write) and resolves snapshots for `vm create --from`. Layout and records: store.ts.
 */
export class SnapshotService {
  private readonly names = new KeyedMutex();

  constructor(private readonly d: SnapshotServiceDeps) {}

  async list(): Promise<SnapshotInfo[]> {
    const all = await readSnapshots(this.d.paths.snapshotsDir);
    const deps = await this.dependents(all);
    return all.map((s) => this.info(s, deps.get(s.id) ?? []));
  }

  async show(ref: string): Promise<SnapshotInfo> {
    const s = await this.get(ref);
    return this.info(s, (await this.dependents([s])).get(s.id) ?? []);
  }

  /** The snapshot called `ref` (name or id), checked restorable on this host: same VMM, unchanged image. */
  async source(ref: string): Promise<RestoreSource> {
    const s = await this.get(ref);
    if (s.unfinished)
      throw failedPrecondition(
        `snapshot '${s.name}' was not finished (the daemon stopped while taking it): it holds VM '${s.sourceVmName}'s disks only`,
        `take a new one with \`banger vm snapshot ${s.sourceVmName}\`; this one can be deleted once no VM uses it`,
      );
    if (s.memoryDropped)
      throw failedPrecondition(
        `snapshot '${s.name}' was taken by \`vm fork\`, which let its memory go once the copies ran: it holds the disks they and VM '${s.sourceVmName}' are layered on only`,
        `fork again (\`banger vm fork ${s.sourceVmName} --count N\`), or take a snapshot to keep (\`banger vm snapshot ${s.sourceVmName}\`)`,
      );
    const image = this.d.images.byIdReady(s.imageId);
    if ((await imageKey(image)) !== s.imageKey)
      throw failedPrecondition(
        `snapshot '${s.name}' was taken on image '${image.name}' as it was then; that image has changed since`,
        'a snapshot resumes only on the exact image it was taken on: take a new snapshot of a VM on the current image',
      );
    return { snapshot: s, dir: this.d.paths.snapshotDir(s.id) };
  }

  /** Takes a snapshot of the running VM `p.vm`; `madeBy` marks one taken for `vm fork` (SnapshotRecord.madeBy). */
  async create(p: { vm: string; name?: string; madeBy?: 'fork' }, signal?: AbortSignal): Promise<SnapshotInfo> {
    if (p.name !== undefined) validateVmName(p.name);
    return this.names.run('names', async () => {
      const all = await readSnapshots(this.d.paths.snapshotsDir);
      const name = p.name ?? `${p.vm}-${all.filter((s) => s.sourceVmName === p.vm).length + 1}`;
      if (all.some((s) => s.name === name))
        throw alreadyExists(`a snapshot named '${name}' already exists`, `pick another --name, or \`banger snapshot delete ${name}\``);
      const rec = await this.d.vms.withRunning(
        p.vm,
        async (r) => {
          await this.d.vms.holdIdentity?.(r.vm, signal);
          return this.take(r, { name, madeBy: p.madeBy }, signal);
        },
        signal,
      );
      // Its source is layered on it, unless its disks are copies.
      return this.info(rec, rec.rootFormat === 'raw' ? [] : [p.vm]);
    }, signal);
  }

  private async take(r: RunningVm, label: Label, signal?: AbortSignal): Promise<SnapshotRecord> {
    const { vm, vp, handle, driver } = r;
    const snaps = driver.snapshots;
    if (!snaps) throw failedPrecondition(`VM '${vm.name}' runs under ${driver.name}, which cannot take snapshots`, 'use a VM created with --vmm qemu');
    const image = this.d.images.byIdReady(vm.imageId);
    if (snaps.disks === 'copies') return this.takeCopies(r, snaps, label, image, signal);
    const id = randomBytes(6).toString('hex');
    const final = this.d.paths.snapshotDir(id);
    const partial = join(this.d.paths.snapshotsDir, `.partial-${id}`);
    // Memory in full, plus headroom: the state stream is at most the guest's RAM and its devices.
    const needed = (vm.memoryMib + 64) * MIB;
    const what = `snapshot VM '${vm.name}'`;
    // New names, never a path used before: QEMU reopens the frozen files by the names it opened them with.
    const cur = activeDisks(vp);
    const next = { root: join(vp.dir, overlayNames(id).root), work: join(vp.dir, overlayNames(id).work) };
    const workFormat = diskFormat(cur.work);
    let switched = false;
    try {
      await mkdir(partial, { recursive: true, mode: 0o700 });
      await ensureFreeSpace(partial, needed, what);
      // The disks' current files become the snapshot's (hard links: no copy); the VM moves onto new overlays.
      await link(cur.root, join(partial, SNAPSHOT_FILES.root));
      await link(cur.work, join(partial, SNAPSHOT_FILES.work));
      const rootSize = virtualSize(cur.root, (await stat(cur.root)).size);
      const workSize = virtualSize(cur.work, (await stat(cur.work)).size);
      // -u: the backing path is where the snapshot will be once whole (it is .partial until then).
      await this.d.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', join(final, SNAPSHOT_FILES.root), '-F', 'qcow2', next.root, String(rootSize)], { signal });
      await this.d.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', join(final, SNAPSHOT_FILES.work), '-F', workFormat, next.work, String(workSize)], { signal });
      const rec: SnapshotRecord = {
        ...(await this.recordOf(r, id, label, image)),
        workFormat,
        dependsOn: await vmSnapshotIds(vp.dir),
        pausedMs: 0,
        unfinished: true,
      };
      // From here on the VM may be moved onto the new layers: named in its list first (so the snapshot is never
      // deletable while its disks sit on it), then the unfinished record that tells reconcile to keep the disks.
      await addVmSnapshotIds(vp.dir, [id]);
      await writeJson(join(partial, SNAPSHOT_FILES.record), rec);
      switched = true;
      const { pausedMs, ram } = await snaps.save(
        handle,
        {
          disks: [{ id: 'root', overlayPath: next.root }, { id: 'work', overlayPath: next.work }],
          statePath: join(partial, SNAPSHOT_FILES.state),
          ramPath: join(partial, SNAPSHOT_FILES.memory),
        },
        signal,
      );
      // The VM's disks are now the overlays (its next start opens them); the old files are the snapshot's too.
      await writeJson(join(vp.dir, ACTIVE_DISKS_FILE), overlayNames(id));
      const whole: SnapshotRecord = { ...rec, pausedMs, ram };
      delete whole.unfinished;
      await writeJson(join(partial, SNAPSHOT_FILES.record), whole);
      await rename(partial, final);
      this.d.log.info({ vm: vm.name, snapshot: label.name, pausedMs, ram }, 'snapshot taken');
      return whole;
    } catch (e) {
      if (!switched) {
        await rm(partial, { recursive: true, force: true });
        await rm(next.root, { force: true });
        await rm(next.work, { force: true });
      } else {
        // The VM may be on the new layers already: keep their backing files, as reconcile would.
        await keepDisks(this.d, partial, vm).catch((k: unknown) => this.d.log.warn({ err: k, vm: vm.name }, 'could not keep an unfinished snapshot'));
      }
      throw e instanceof BangerError ? e : asNoSpace(e, this.d.paths.snapshotsDir, what, needed);
    }
  }

  /**
   * A snapshot of a VM whose VMM cannot move it onto new disk layers (Firecracker): its raw disks are copied
   * (`cp --reflink=auto --sparse=always`: no data copied on a filesystem with reflinks, only the written blocks
   * otherwise) while its CPUs are stopped. Nothing of the VM changes, so a failure or a kill leaves only the
   * `.partial-` directory, which goes (here, or at reconcile), and no VM is layered on the snapshot.
   */
  private async takeCopies(r: RunningVm, snaps: VmmSnapshots, label: Label, image: ReadyImage, signal?: AbortSignal): Promise<SnapshotRecord> {
    const { vm, vp, handle } = r;
    const id = randomBytes(6).toString('hex');
    const partial = join(this.d.paths.snapshotsDir, `.partial-${id}`);
    const root = vp.rootDiskRaw;
    const work = activeDisks(vp).work;
    const what = `snapshot VM '${vm.name}'`;
    const needed = (vm.memoryMib + 64) * MIB + (fileUse(root)?.hostBytes ?? 0) + (fileUse(work)?.hostBytes ?? 0);
    try {
      await mkdir(partial, { recursive: true, mode: 0o700 });
      await ensureFreeSpace(partial, needed, what);
      const copy = (from: string, to: string) => this.d.run('cp', ['--reflink=auto', '--sparse=always', from, to], { signal });
      // Written first, so a daemon killed while the VM is paused leaves reconcile the VM to resume.
      const rec: SnapshotRecord = {
        ...(await this.recordOf(r, id, label, image)),
        workFormat: diskFormat(work),
        rootFormat: 'raw',
        dependsOn: [],
        pausedMs: 0,
        unfinished: true,
      };
      await writeJson(join(partial, SNAPSHOT_FILES.record), rec);
      const { pausedMs, ram } = await snaps.save(
        handle,
        {
          disks: [],
          statePath: join(partial, SNAPSHOT_FILES.state),
          ramPath: join(partial, SNAPSHOT_FILES.memory),
          whilePaused: async () => {
            await copy(root, join(partial, SNAPSHOT_FILES.rootRaw));
            await copy(work, join(partial, SNAPSHOT_FILES.work));
          },
        },
        signal,
      );
      const whole: SnapshotRecord = { ...rec, pausedMs, ram };
      delete whole.unfinished;
      await writeJson(join(partial, SNAPSHOT_FILES.record), whole);
      await rename(partial, this.d.paths.snapshotDir(id));
      this.d.log.info({ vm: vm.name, snapshot: label.name, pausedMs, ram, disks: 'copies' }, 'snapshot taken');
      return whole;
    } catch (e) {
      await rm(partial, { recursive: true, force: true });
      throw e instanceof BangerError ? e : asNoSpace(e, this.d.paths.snapshotsDir, what, needed);
    }
  }

  /** The parts of a snapshot's record that say what it was taken of. */
  private async recordOf(
    r: RunningVm,
    id: string,
    label: Label,
    image: ReadyImage,
  ): Promise<Omit<SnapshotRecord, 'workFormat' | 'dependsOn' | 'pausedMs'>> {
    const { vm, handle, driver } = r;
    return {
      id,
      name: label.name,
      ...(label.madeBy ? { madeBy: label.madeBy } : {}),
      sourceVmId: vm.id,
      sourceVmName: vm.name,
      vmm: driver.name,
      accel: handle.accel,
      imageId: vm.imageId,
      imageKey: await imageKey(image),
      vcpus: vm.vcpus,
      memoryMib: vm.memoryMib,
      diskSizeMib: vm.diskSizeMib,
      agent: r.hasAgent,
      ...(handle.bulkSocketPath !== undefined ? { bulkPort: true as const } : {}),
      egress: vm.egress,
      mac: vm.mac,
      network: vm.networkMode,
      workspace: vm.workspace,
      createdAt: (this.d.now ?? (() => new Date()))().toISOString(),
    };
  }

  async delete(ref: string): Promise<{ deleted: string }> {
    const deleted = await this.names.run('names', async () => {
      const s = await this.get(ref);
      const all = await readSnapshots(this.d.paths.snapshotsDir);
      const users = (await this.dependents(all)).get(s.id) ?? [];
      const layered = layeredOn(all, s.id).map((o) => `snapshot '${o.name}'`);
      if (users.length + layered.length > 0) {
        const who = [...users.map((n) => `VM '${n}'`), ...layered];
        throw new BangerError(ErrorCode.FailedPrecondition, `snapshot '${s.name}' is in use: ${who.join(', ')} ${who.length === 1 ? 'has its' : 'have their'} disks layered on it`, {
          hint: `delete ${users.length > 0 ? `those VMs first (\`banger vm delete --force ${users.join(' ')}\`)` : 'those snapshots first'}`,
        });
      }
      await this.remove(s);
      return { deleted: s.name };
    });
    // A fork's snapshot it was layered on may be unused now.
    await this.collectForks();
    return deleted;
  }

  /**
   * Deletes the snapshots `vm fork` took (SnapshotRecord.madeBy) that no VM and no snapshot is layered on any
   * more: a fork's snapshot is the disk base of the source and its copies, not one the user asked to keep.
   * Run after a VM or snapshot is deleted, and at start. Never throws: one that cannot be removed is logged and
   * left to the next run.
   */
  async collectForks(): Promise<string[]> {
    return this.names.run('names', async () => {
      const gone: string[] = [];
      try {
        const all = await readSnapshots(this.d.paths.snapshotsDir);
        const users = await this.dependents(all);
        const left = new Set(all.map((s) => s.id));
        // Newest first: a snapshot layered on another is always the newer (a fork of a fork's copy is layered on
        // both), so one pass frees the older once the newer is gone.
        for (const s of [...all].reverse()) {
          if (s.madeBy !== 'fork' || users.has(s.id) || layeredOn(all, s.id).some((o) => left.has(o.id))) continue;
          await this.remove(s);
          left.delete(s.id);
          gone.push(s.name);
        }
      } catch (e) {
        this.d.log.warn({ err: (e as Error).message }, 'could not delete an unused fork snapshot');
      }
      return gone;
    });
  }

  /**
   * Once `vm fork` is done with its snapshot (its copies run, or it gave up), the snapshot's memory and device
   * state (a GiB for a default VM) are needed by nothing: each copy maps the memory file it resumed from (an
   * unlinked file stays theirs while they run) and later starts boot from disk. Its disks stay, as the source's
   * and the copies' base, until collectForks. At start, also for forks a killed daemon left: those whose copies
   * are all past their first start (no VM's restore marker names them). Never throws: what cannot be removed is
   * logged, and tried again at the next start.
   */
  async dropForkMemory(id?: string): Promise<void> {
    await this.names.run('names', () => this.dropForkMemoryLocked(id)).catch((e: unknown) =>
      this.d.log.warn({ err: (e as Error).message }, "could not drop a fork snapshot's memory"),
    );
  }

  private async dropForkMemoryLocked(id: string | undefined): Promise<void> {
    const pending = new Set<string>();
    for (const vm of this.d.vms.records()) {
      const marker = await readJson<RestoreMarker>(join(vm.dir, VM_RESTORE_FILE)).catch(() => undefined);
      if (marker) pending.add(marker.snapshotId);
    }
    for (const s of await readSnapshots(this.d.paths.snapshotsDir)) {
      if ((id !== undefined && s.id !== id) || s.madeBy !== 'fork' || !holdsSavedState(s) || pending.has(s.id)) continue;
      const dir = this.d.paths.snapshotDir(s.id);
      // Marked first: a kill in between leaves files on a snapshot no one restores, not a restorable one without them.
      await writeJson(join(dir, SNAPSHOT_FILES.record), { ...s, memoryDropped: true });
      await Promise.all([SNAPSHOT_FILES.state, SNAPSHOT_FILES.memory].map((f) => rm(join(dir, f), { force: true })));
      this.d.log.info({ snapshot: s.name }, "fork snapshot's memory dropped: its copies run");
    }
  }

  private async remove(s: SnapshotRecord): Promise<void> {
    const dir = this.d.paths.snapshotDir(s.id);
    const doomed = join(this.d.paths.snapshotsDir, `.deleting-${s.id}`);
    await rename(dir, doomed);
    await rm(doomed, { recursive: true, force: true });
    this.d.log.info({ snapshot: s.name, ...(s.madeBy ? { madeBy: s.madeBy } : {}) }, 'snapshot deleted');
  }

  /** What a killed daemon left of snapshots (recover.ts). */
  async reconcile(): Promise<void> {
    await recoverSnapshots(this.d);
  }

  private async get(ref: string): Promise<SnapshotRecord> {
    const all = await readSnapshots(this.d.paths.snapshotsDir);
    const s = all.find((x) => x.name === ref) ?? all.find((x) => x.id === ref);
    if (!s) throw notFound(`no snapshot named '${ref}'`, 'list snapshots with `banger snapshot list`');
    return s;
  }

  /** Snapshot id -> names of the VMs whose disks are layered on it. */
  private async dependents(snaps: SnapshotRecord[]): Promise<Map<string, string[]>> {
    const ids = new Set(snaps.map((s) => s.id));
    const out = new Map<string, string[]>();
    for (const vm of this.d.vms.records()) {
      for (const id of await vmSnapshotIds(vm.dir)) {
        if (!ids.has(id)) continue;
        out.set(id, [...(out.get(id) ?? []), vm.name]);
      }
    }
    return out;
  }

  private info(s: SnapshotRecord, dependents: string[]): SnapshotInfo {
    return snapshotInfo(s, this.d.paths.snapshotDir(s.id), dependents, this.d.images);
  }
}
