import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { Paths } from '../../src/shared/paths.js';
import { silentLogger } from '../../src/shared/logger.js';
import { diskFormat } from '../../src/daemon/services/vm/disks.js';
import { incomingFromFile, outgoingToFile, qemuArgv } from '../../src/daemon/vmm/qemu/argv.js';
import { makeRestoredFiles } from '../../src/daemon/services/snapshot/restore.js';
import { runCommand } from '../../src/shared/command.js';
import { createShape } from '../../src/daemon/services/vm/create.js';
import { SnapshotService } from '../../src/daemon/services/snapshot/service.js';
import { imageKey } from '../../src/daemon/services/snapshot/info.js';
import type { ReadyImage } from '../../src/daemon/services/image/service.js';
import type { SnapshotRecord } from '../../src/daemon/services/snapshot/store.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import type { RunningVm } from '../../src/daemon/services/vm/service.js';
import type { LaunchSpec } from '../../src/daemon/vmm/driver.js';
import { scratchDir } from '../helpers/scratch.js';

const tmp = () => scratchDir('banger-snap-');

test('diskFormat reads the qcow2 magic; anything else (or nothing) is raw', () => {
  const dir = tmp();
  writeFileSync(join(dir, 'q'), Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), Buffer.alloc(60)]));
  writeFileSync(join(dir, 'r'), Buffer.alloc(64));
  assert.equal(diskFormat(join(dir, 'q')), 'qcow2');
  assert.equal(diskFormat(join(dir, 'r')), 'raw');
  assert.equal(diskFormat(join(dir, 'missing')), 'raw');
});

test('state file transports quote the path for the shell QEMU runs them with', () => {
  assert.equal(incomingFromFile("/a b/it's"), `exec:cat '/a b/it'\\''s'`);
  assert.equal(outgoingToFile('/s/state.bin'), 'exec:cat > /s/state.bin');
  const spec: LaunchSpec = {
    vmId: 'v1',
    name: 'n',
    vcpus: 1,
    memoryMib: 256,
    accel: 'tcg',
    kernelPath: '/k',
    initrdPath: '/i',
    kernelCmdline: 'console=ttyS0',
    disks: [{ id: 'root', path: '/r.qcow2', format: 'qcow2', readOnly: false }],
    network: { mode: 'user', hostAddress: '127.0.0.1', sshHostPort: 2222, egress: false, mac: '52:54:00:12:34:56' },
    consoleLogPath: '/c',
    vmmLogPath: '/l',
    controlSocketPath: '/q',
    incoming: { statePath: '/s/state.bin', ramPath: '/s/memory.ram', ram: 'stream-machine' },
  };
  const argv = qemuArgv(spec);
  assert.deepEqual(argv.slice(-2), ['-incoming', 'exec:cat /s/state.bin']);
  assert.equal(qemuArgv({ ...spec, incoming: undefined }).includes('-incoming'), false);
});

test('a VM made from a snapshot keeps its networking; asking for another is refused with what to drop', () => {
  const tapSnap = { ...fakeSnapshot('t1', 'tapsnap'), network: 'tap' as const };
  assert.equal(createShape({ restore: { snapshot: tapSnap, dir: '/x' } }, 'loopback').networkMode, 'tap');
  assert.equal(createShape({ restore: { snapshot: tapSnap, dir: '/x' }, network: 'tap' }, 'loopback').networkMode, 'tap');
  // Snapshots from before the field were all of loopback VMs.
  assert.equal(createShape({ restore: { snapshot: fakeSnapshot('l1', 'old'), dir: '/x' } }, 'tap').networkMode, 'loopback');
  assert.throws(
    () => createShape({ restore: { snapshot: tapSnap, dir: '/x' }, network: 'loopback' }, 'loopback'),
    (e: unknown) => e instanceof BangerError && e.code === ErrorCode.InvalidArgument && /uses tap networking/.test(e.message) && e.hint === 'drop --network loopback',
  );
});

/** A snapshot service over files alone: no VM runs, no image is ready, no command is run. */
function filesOnly(paths: Paths, vms: () => Pick<VmRecord, 'name' | 'dir'>[]): SnapshotService {
  return new SnapshotService({
    paths,
    vms: { withRunning: () => Promise.reject(new Error('unused')), records: () => vms() as VmRecord[] },
    images: { byIdReady: () => { throw new BangerError(ErrorCode.NotFound, 'gone'); } },
    run: () => Promise.reject(new Error('unused')),
    log: silentLogger(),
  });
}

function fakeSnapshot(id: string, name: string, dependsOn: string[] = []): SnapshotRecord {
  return {
    id,
    name,
    sourceVmId: 'src',
    sourceVmName: 'src',
    vmm: 'qemu',
    accel: 'tcg',
    imageId: 'img',
    imageKey: 'k',
    vcpus: 1,
    memoryMib: 256,
    diskSizeMib: 64,
    agent: true,
    egress: false,
    mac: '52:54:00:12:34:56',
    workspace: null,
    workFormat: 'raw',
    dependsOn,
    createdAt: `2026-01-01T00:00:0${id.length}Z`,
    pausedMs: 5,
  };
}

test('snapshot delete is refused (FailedPrecondition) while a VM or a snapshot is layered on it', async () => {
  const root = tmp();
  const paths = new Paths(root);
  const vmDir = join(root, 'vms', 'v1');
  mkdirSync(vmDir, { recursive: true });
  for (const s of [fakeSnapshot('s1', 'base'), fakeSnapshot('s22', 'child', ['s1'])]) {
    mkdirSync(paths.snapshotDir(s.id), { recursive: true });
    writeFileSync(join(paths.snapshotDir(s.id), 'snapshot.json'), JSON.stringify(s));
  }
  let vms: Pick<VmRecord, 'name' | 'dir'>[] = [{ name: 'dev', dir: vmDir }];
  writeFileSync(join(vmDir, 'snapshots.json'), JSON.stringify(['s22']));
  const svc = filesOnly(paths, () => vms);
  assert.deepEqual((await svc.list()).map((s) => [s.name, s.dependents]), [['base', []], ['child', ['dev']]]);
  await assert.rejects(svc.delete('base'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /snapshot 'child'/.test(e.message));
  await assert.rejects(svc.delete('child'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /VM 'dev'/.test(e.message) && /banger vm delete --force dev/.test(e.hint ?? ''));
  vms = [];
  assert.deepEqual(await svc.delete('child'), { deleted: 'child' });
  assert.deepEqual(await svc.delete('base'), { deleted: 'base' });
  assert.equal(existsSync(paths.snapshotDir('s1')), false);
  await assert.rejects(svc.delete('base'), (e: BangerError) => e.code === ErrorCode.NotFound);
});

test("a fork's snapshot goes with the last VM or snapshot layered on it; the user's stay", async () => {
  const root = tmp();
  const paths = new Paths(root);
  const dirs = { src: join(root, 'vms', 'src'), fk1: join(root, 'vms', 'fk1'), fk2: join(root, 'vms', 'fk2') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const fork = (id: string, name: string, dependsOn: string[] = []) => ({ ...fakeSnapshot(id, name, dependsOn), madeBy: 'fork' as const });
  // f1: a fork of src; f2: a fork of its copy fk1 (layered on f1 too); mine: the user's, of src.
  for (const s of [fork('f1', 'src-fork-1'), fork('f22', 'fk1-fork-1', ['f1']), fakeSnapshot('u333', 'mine')]) {
    mkdirSync(paths.snapshotDir(s.id), { recursive: true });
    writeFileSync(join(paths.snapshotDir(s.id), 'snapshot.json'), JSON.stringify(s));
  }
  writeFileSync(join(dirs.src, 'snapshots.json'), JSON.stringify(['f1', 'u333']));
  writeFileSync(join(dirs.fk1, 'snapshots.json'), JSON.stringify(['f1', 'f22']));
  writeFileSync(join(dirs.fk2, 'snapshots.json'), JSON.stringify(['f1', 'f22']));
  let vms: Pick<VmRecord, 'name' | 'dir'>[] = [
    { name: 'src', dir: dirs.src },
    { name: 'fk1', dir: dirs.fk1 },
    { name: 'fk2', dir: dirs.fk2 },
  ];
  const svc = filesOnly(paths, () => vms);
  const names = async () => (await svc.list()).map((s) => `${s.name}${s.madeByFork ? ' (fork)' : ''}`);
  assert.deepEqual(await svc.collectForks(), [], 'all in use');
  vms = vms.filter((v) => v.name !== 'fk2');
  assert.deepEqual(await svc.collectForks(), [], 'fk1 still uses both');
  vms = vms.filter((v) => v.name !== 'fk1');
  assert.deepEqual(await svc.collectForks(), ['fk1-fork-1'], 'src still uses the first');
  assert.deepEqual(await names(), ['src-fork-1 (fork)', 'mine']);
  vms = [];
  assert.deepEqual(await svc.collectForks(), ['src-fork-1']);
  assert.deepEqual(await names(), ['mine'], 'the snapshot the user took stays');
  assert.equal(existsSync(paths.snapshotDir('f1')), false);
});

test("a fork's snapshot lets its memory go once no copy is still to resume from it; the user's keep theirs", async () => {
  const root = tmp();
  const paths = new Paths(root);
  const vmDir = join(root, 'vms', 'waiting');
  mkdirSync(vmDir, { recursive: true });
  const fork = (id: string, name: string) => ({ ...fakeSnapshot(id, name), madeBy: 'fork' as const, ram: 'file' as const });
  for (const s of [fork('f1', 'done'), fork('f22', 'pending'), { ...fakeSnapshot('u333', 'mine'), ram: 'file' as const }]) {
    mkdirSync(paths.snapshotDir(s.id), { recursive: true });
    writeFileSync(join(paths.snapshotDir(s.id), 'snapshot.json'), JSON.stringify(s));
    for (const f of ['state.bin', 'memory.ram', 'root.qcow2', 'work.img']) writeFileSync(join(paths.snapshotDir(s.id), f), f);
  }
  // A copy made from f22 that a killed daemon never started: it still resumes from f22's memory.
  writeFileSync(join(vmDir, 'restore.json'), JSON.stringify({ snapshotId: 'f22' }));
  const svc = filesOnly(paths, () => [{ name: 'waiting', dir: vmDir }]);
  await svc.dropForkMemory();
  const files = (id: string) => readdirSync(paths.snapshotDir(id)).sort();
  assert.deepEqual(files('f1'), ['root.qcow2', 'snapshot.json', 'work.img'], 'disks only');
  assert.deepEqual(files('f22'), ['memory.ram', 'root.qcow2', 'snapshot.json', 'state.bin', 'work.img']);
  assert.deepEqual(files('u333'), ['memory.ram', 'root.qcow2', 'snapshot.json', 'state.bin', 'work.img']);
  assert.deepEqual((await svc.list()).map((s) => [s.name, s.restorable]), [['done', false], ['pending', true], ['mine', true]]);
  await assert.rejects(svc.source('done'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /let its memory go/.test(e.message) && /banger vm fork src/.test(e.hint ?? ''));
});

test('reconcile: a snapshot a killed daemon left mid-way keeps its disks under the VM when it had a record, and goes when not', async () => {
  const root = tmp();
  const paths = new Paths(root);
  const vmDir = join(root, 'vms', 'src');
  mkdirSync(vmDir, { recursive: true });
  // Killed after the record (the VM may already write into the overlays): the disks are kept.
  const kept = { ...fakeSnapshot('aaa', 'src-1'), unfinished: true as const };
  const keptPartial = join(paths.snapshotsDir, '.partial-aaa');
  mkdirSync(keptPartial, { recursive: true });
  writeFileSync(join(keptPartial, 'snapshot.json'), JSON.stringify(kept));
  writeFileSync(join(keptPartial, 'root.qcow2'), 'frozen root');
  for (const f of ['root-aaa.qcow2', 'work-aaa.qcow2']) writeFileSync(join(vmDir, f), 'overlay');
  // Killed before the record (the VM was never moved): the directory and its overlays go.
  const gonePartial = join(paths.snapshotsDir, '.partial-bbb');
  mkdirSync(gonePartial, { recursive: true });
  for (const f of ['root-bbb.qcow2', 'work-bbb.qcow2']) writeFileSync(join(vmDir, f), 'overlay');
  mkdirSync(join(paths.snapshotsDir, '.deleting-ccc'));
  // The daemon may have died with the VM's CPUs stopped for the snapshot: reconcile starts them again.
  const resumed: string[] = [];
  const withRunning = async <T>(name: string, fn: (r: RunningVm) => Promise<T>) =>
    fn({ driver: { pausing: { resume: async () => void resumed.push(name) } } } as unknown as RunningVm);
  const svc = new SnapshotService({
    paths,
    vms: { withRunning, records: () => [{ id: 'src', name: 'src', dir: vmDir }] as VmRecord[] },
    images: { byIdReady: () => { throw new BangerError(ErrorCode.NotFound, 'gone'); } },
    run: () => Promise.reject(new Error('unused')),
    log: silentLogger(),
  });
  await svc.reconcile();
  assert.deepEqual(readdirSync(paths.snapshotsDir), ['aaa']);
  assert.deepEqual(resumed, ['src']);
  assert.equal(readFileSync(join(paths.snapshotDir('aaa'), 'root.qcow2'), 'utf8'), 'frozen root');
  // The VM's next start opens the overlays, whose backing files now exist; the snapshot is one it depends on.
  assert.deepEqual(JSON.parse(readFileSync(join(vmDir, 'disks.json'), 'utf8')), { root: 'root-aaa.qcow2', work: 'work-aaa.qcow2' });
  assert.deepEqual(JSON.parse(readFileSync(join(vmDir, 'snapshots.json'), 'utf8')), ['aaa']);
  assert.deepEqual(readdirSync(vmDir).sort(), ['disks.json', 'root-aaa.qcow2', 'snapshots.json', 'work-aaa.qcow2']);
  const [info] = await svc.list();
  assert.equal(info!.restorable, false);
  assert.deepEqual(info!.dependents, ['src']);
  await assert.rejects(svc.source('src-1'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /not finished/.test(e.message));
  await assert.rejects(svc.delete('src-1'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /VM 'src'/.test(e.message));
});

test('a snapshot restores only on the image as it was: a rebuilt image is refused (FailedPrecondition, 67)', async () => {
  const root = tmp();
  const paths = new Paths(root);
  const rootfs = join(root, 'rootfs.ext4');
  writeFileSync(rootfs, 'image as it was');
  const image = { name: 'default', rootfsPath: rootfs, kernelSha256: 'k1' } as ReadyImage;
  const s = { ...fakeSnapshot('s1', 'warm'), imageKey: await imageKey(image) };
  mkdirSync(paths.snapshotDir(s.id), { recursive: true });
  writeFileSync(join(paths.snapshotDir(s.id), 'snapshot.json'), JSON.stringify(s));
  let current = image;
  const svc = new SnapshotService({
    paths,
    vms: { withRunning: () => Promise.reject(new Error('unused')), records: () => [] },
    images: { byIdReady: () => current },
    run: () => Promise.reject(new Error('unused')),
    log: silentLogger(),
  });
  assert.equal((await svc.source('warm')).snapshot.id, 's1');
  // Another kernel (same rootfs), then another rootfs (same kernel): each is refused, saying why.
  current = { ...image, kernelSha256: 'k2' };
  await assert.rejects(svc.source('warm'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /has changed since/.test(e.message));
  current = image;
  writeFileSync(rootfs, 'image rebuilt, longer');
  await assert.rejects(svc.source('warm'), (e: BangerError) => e.code === ErrorCode.FailedPrecondition && /has changed since/.test(e.message));
});

test('a VMM without disk layers (Firecracker): the disks are copied while the VM is paused, nothing is layered on the snapshot, and a restore copies them again', async () => {
  const root = tmp();
  const paths = new Paths(root);
  const rootfs = join(root, 'rootfs.ext4');
  writeFileSync(rootfs, 'image');
  const image = { name: 'default', rootfsPath: rootfs, kernelSha256: 'k1' } as ReadyImage;
  const vp = paths.vm('v1');
  mkdirSync(vp.dir, { recursive: true });
  writeFileSync(vp.rootDiskRaw, 'root as it is');
  writeFileSync(vp.workDisk, 'work as it is');
  const events: string[] = [];
  const vm = { id: 'v1', name: 'fc', dir: vp.dir, imageId: 'img', vcpus: 1, memoryMib: 64, diskSizeMib: 64, egress: false, mac: '52:54:00:12:34:56', networkMode: 'tap', workspace: null } as unknown as VmRecord;
  const driver = {
    name: 'firecracker',
    snapshots: {
      disks: 'copies',
      async save(_h: unknown, o: { disks: unknown[]; statePath: string; ramPath: string; whilePaused?: () => Promise<void> }) {
        assert.deepEqual(o.disks, []);
        events.push('paused');
        writeFileSync(o.statePath, 'state');
        writeFileSync(o.ramPath, 'memory');
        await o.whilePaused?.();
        events.push('resumed');
        // What the guest writes once it runs again is not in the snapshot.
        writeFileSync(vp.rootDiskRaw, 'root written after');
        return { pausedMs: 7, ram: 'file' };
      },
    },
  };
  const running = { vm, vp, handle: { accel: 'kvm' }, driver, hasAgent: true } as unknown as RunningVm;
  const svc = new SnapshotService({
    paths,
    vms: { withRunning: async (_n, fn) => fn(running), records: () => [vm] },
    images: { byIdReady: () => image },
    run: async (cmd, args, opts) => {
      events.push(`${cmd} ${args.slice(0, 2).join(' ')}`);
      return runCommand(cmd, args, opts);
    },
    log: silentLogger(),
  });
  const info = await svc.create({ vm: 'fc', name: 'fc-1' });
  assert.deepEqual(events, ['paused', 'cp --reflink=auto --sparse=always', 'cp --reflink=auto --sparse=always', 'resumed']);
  assert.equal(info.network, 'tap');
  assert.deepEqual(info.dependents, [], 'no VM is layered on a snapshot by copies');
  const dir = paths.snapshotDir(info.id);
  assert.equal(readFileSync(join(dir, 'root.img'), 'utf8'), 'root as it is');
  assert.equal(readFileSync(join(dir, 'work.img'), 'utf8'), 'work as it is');
  assert.equal(existsSync(join(vp.dir, 'snapshots.json')), false);
  assert.equal(existsSync(join(vp.dir, 'disks.json')), false, 'the VM keeps its own disk files');

  // A VM made from it gets copies of the snapshot's disks, not the source's files as they are now.
  const src = await svc.source('fc-1');
  assert.equal(src.snapshot.rootFormat, 'raw');
  const vp2 = paths.vm('v2');
  await makeRestoredFiles(vp2, src, runCommand, 'fc-copy');
  assert.equal(readFileSync(vp2.rootDiskRaw, 'utf8'), 'root as it is');
  assert.equal(readFileSync(vp2.workDisk, 'utf8'), 'work as it is');
  assert.equal(existsSync(join(vp2.dir, 'snapshots.json')), false);
  assert.deepEqual(await svc.delete('fc-1'), { deleted: 'fc-1' });

  // Killed mid-way: the partial directory goes and the VM is resumed; its disks were never touched.
  const partial = join(paths.snapshotsDir, '.partial-ddd');
  mkdirSync(partial, { recursive: true });
  writeFileSync(join(partial, 'snapshot.json'), JSON.stringify({ ...fakeSnapshot('ddd', 'fc-2'), sourceVmId: 'v1', rootFormat: 'raw', unfinished: true }));
  const resumed: string[] = [];
  const svc2 = new SnapshotService({
    paths,
    vms: {
      withRunning: async (n, fn) => fn({ driver: { pausing: { resume: async () => void resumed.push(n) } } } as unknown as RunningVm),
      records: () => [vm],
    },
    images: { byIdReady: () => image },
    run: runCommand,
    log: silentLogger(),
  });
  await svc2.reconcile();
  assert.deepEqual(readdirSync(paths.snapshotsDir), []);
  assert.deepEqual(resumed, ['fc']);
  assert.equal(existsSync(join(vp.dir, 'disks.json')), false);
});
