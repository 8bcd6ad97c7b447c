/**
 * Work disks on real e2fsprogs: what a new one costs the host, growing one (data kept, the filesystem as big as
 * the file, a failure leaving the old disk usable), `vm set`'s rules, the host-disk-full errors and `vm show`.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  SPACE_NEEDED,
  asNoSpace,
  ensureFreeSpace,
  growWorkDisk,
  makeWorkDisk,
  workDiskMkfsArgs,
} from '../../src/daemon/services/vm/disks.js';
import { applyVmSettings, qcow2VirtualSize, vmDisks } from '../../src/daemon/services/vm/settings.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import type { VmInfo } from '../../src/protocol/vm.js';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { VmPaths } from '../../src/shared/paths.js';
import { vmDetails } from '../../src/cli/commands/vm/format.js';
import { ext4Bytes, failureOf } from '../helpers/daemon-fixtures.js';
import { scratchDir } from '../helpers/scratch.js';

const MIB = 1024 * 1024;
const dir = scratchDir('banger-disks-');
after(() => rmSync(dir, { recursive: true, force: true }));

const sh = (cmd: string, args: string[]) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

test('mkfs.ext4 flags of a work disk are pinned: lazy journal, inode tables cleared by punching holes', () => {
  assert.deepEqual(workDiskMkfsArgs('/v/work.ext4'), [
    '-q',
    '-F',
    '-L',
    'work',
    '-E',
    'root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1',
    '/v/work.ext4',
  ]);
});

test('a new 64G work disk costs the host at most 64 MiB, a 1G one a few MiB; both are clean ext4 of that size', async () => {
  for (const [sizeMib, maxHostMib] of [
    [64 * 1024, 64],
    [1024, 8],
  ] as const) {
    const path = join(dir, `work-${sizeMib}.ext4`);
    await makeWorkDisk(runCommand, path, sizeMib);
    const st = statSync(path);
    assert.equal(st.size, sizeMib * MIB);
    assert.ok(st.blocks * 512 <= maxHostMib * MIB, `${sizeMib} MiB disk uses ${(st.blocks * 512) / MIB} MiB on the host`);
    assert.equal(ext4Bytes(path), sizeMib * MIB);
    sh('e2fsck', ['-f', '-n', path]);
    rmSync(path);
  }
});

test('growing a work disk keeps its files and makes the filesystem as big as the disk', async () => {
  const path = join(dir, 'grow.ext4');
  await makeWorkDisk(runCommand, path, 64);
  sh('debugfs', ['-w', '-R', `write ${process.execPath} node-binary`, path]);
  await growWorkDisk(runCommand, path, 64, 256);
  assert.equal(statSync(path).size, 256 * MIB);
  assert.equal(ext4Bytes(path), 256 * MIB);
  sh('e2fsck', ['-f', '-n', path]);
  const kept = join(dir, 'kept');
  sh('debugfs', ['-R', `dump node-binary ${kept}`, path]);
  assert.equal(statSync(kept).size, statSync(process.execPath).size);
  const shrink = await failureOf(growWorkDisk(runCommand, path, 256, 128));
  assert.equal(shrink.code, ErrorCode.InvalidArgument);
  assert.equal(statSync(path).size, 256 * MIB, 'a refused shrink changes nothing');
});

const vp = new VmPaths(join(dir, 'vm'));
const record = (over: Partial<VmRecord> = {}) =>
  ({ id: 'id1', name: 'box', state: 'stopped', vcpus: 1, memoryMib: 512, diskSizeMib: 64, ...over }) as VmRecord;

test('vm set: cpus and memory recorded (running or not); disk grows only while stopped and never shrinks', async () => {
  rmSync(vp.dir, { recursive: true, force: true });
  sh('mkdir', ['-p', vp.dir]);
  await makeWorkDisk(runCommand, vp.workDisk, 64);
  const d = { running: false, vp, run: runCommand };

  assert.deepEqual(await applyVmSettings(record({ state: 'running' }), { cpus: 2, memoryMib: 2048 }, { ...d, running: true }), {
    vcpus: 2,
    memoryMib: 2048,
  });
  const running = await failureOf(applyVmSettings(record({ state: 'running' }), { diskSizeMib: 128 }, { ...d, running: true }));
  assert.equal(running.code, ErrorCode.FailedPrecondition);
  assert.match(running.hint ?? '', /banger vm stop box/);
  assert.equal(statSync(vp.workDisk).size, 64 * MIB, 'a running VM disk is left alone');

  const shrink = await failureOf(applyVmSettings(record({ diskSizeMib: 128 }), { diskSizeMib: 64 }, d));
  assert.equal(shrink.code, ErrorCode.InvalidArgument);
  assert.match(shrink.message, /cannot shrink/);
  assert.equal((await failureOf(applyVmSettings(record(), {}, d))).code, ErrorCode.InvalidArgument);
  assert.equal((await failureOf(applyVmSettings(record(), { cpus: 65 }, d))).code, ErrorCode.InvalidArgument);

  assert.deepEqual(await applyVmSettings(record(), { cpus: 2, diskSizeMib: 2048 }, d), { vcpus: 2, diskSizeMib: 2048 });
  assert.equal(ext4Bytes(vp.workDisk), 2048 * MIB);
});

test('vm set: a grow that fails records nothing and leaves the old filesystem usable', async () => {
  rmSync(vp.dir, { recursive: true, force: true });
  sh('mkdir', ['-p', vp.dir]);
  await makeWorkDisk(runCommand, vp.workDisk, 64);
  const failingResize: CommandRunner = async (cmd, args, opts) => {
    if (cmd === 'resize2fs') throw new BangerError(ErrorCode.Internal, 'resize2fs: killed');
    return runCommand(cmd, args, opts);
  };
  const err = await failureOf(applyVmSettings(record(), { diskSizeMib: 256 }, { running: false, vp, run: failingResize }));
  assert.match(err.message, /resize2fs/);
  assert.equal(ext4Bytes(vp.workDisk), 64 * MIB, 'the old filesystem, intact');
  sh('e2fsck', ['-f', '-n', vp.workDisk]);
  // Asking again finishes the job.
  assert.deepEqual(await applyVmSettings(record(), { diskSizeMib: 256 }, { running: false, vp, run: runCommand }), {
    diskSizeMib: 256,
  });
  assert.equal(ext4Bytes(vp.workDisk), 256 * MIB);

  // A grow that finished on disk but was never recorded (daemon killed): a smaller ask never cuts the file
  // under its filesystem (resize2fs moves the data and shortens the file itself), and the disk stays clean.
  assert.deepEqual(await applyVmSettings(record(), { diskSizeMib: 128 }, { running: false, vp, run: runCommand }), {
    diskSizeMib: 128,
  });
  assert.equal(ext4Bytes(vp.workDisk), 128 * MIB);
  assert.equal(statSync(vp.workDisk).size, 128 * MIB);
  sh('e2fsck', ['-f', '-n', vp.workDisk]);
});

test('host disk full: the preflight and a full disk met on the way both say ResourceExhausted with the path', async () => {
  const err = await failureOf(ensureFreeSpace('/srv/banger/vms/x', SPACE_NEEDED.create(4096), "create VM 'x'", async () => 3 * MIB));
  assert.equal(err.code, ErrorCode.ResourceExhausted);
  assert.match(err.message, /not enough disk space in \/srv\/banger\/vms\/x to create VM 'x': it needs 9\.0 MiB free, has 3\.0 MiB/);
  await ensureFreeSpace('/x', MIB, 'x', async () => 2 * MIB);

  const enospc = Object.assign(new Error('write failed'), { code: 'ENOSPC' });
  const fromCmd = new BangerError(ErrorCode.Internal, 'mkfs.ext4 failed (exit 1):\nNo space left on device while writing');
  for (const e of [enospc, fromCmd]) {
    const m = asNoSpace(e, '/srv/vms/x', "start VM 'x'") as BangerError;
    assert.equal(m.code, ErrorCode.ResourceExhausted);
    assert.match(m.message, /\/srv\/vms\/x/);
  }
  const other = new Error('boom');
  assert.equal(asNoSpace(other, '/d', 'x'), other);
  // The start preflight is what boot writes plus headroom, in MiB: a number a person can check.
  assert.equal(SPACE_NEEDED.start, 32 * MIB);
});

test('vm show reports each disk: the virtual size and what it costs the host', async () => {
  rmSync(vp.dir, { recursive: true, force: true });
  sh('mkdir', ['-p', vp.dir]);
  await makeWorkDisk(runCommand, vp.workDisk, 4096);
  const base = join(dir, 'base.raw');
  sh('truncate', ['-s', '300M', base]);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', vp.rootDisk]);
  assert.equal(qcow2VirtualSize(vp.rootDisk), 300 * MIB);
  assert.equal(qcow2VirtualSize(vp.workDisk), null);
  const disks = vmDisks(vp, true);
  assert.deepEqual(
    disks.map((d) => [d.id, d.path, d.virtualBytes]),
    [
      ['root', vp.rootDisk, 300 * MIB],
      ['work', vp.workDisk, 4096 * MIB],
    ],
  );
  const work = disks[1]!;
  assert.equal(work.hostBytes, statSync(vp.workDisk).blocks * 512);
  assert.ok(work.hostBytes < 16 * MIB);

  const text = vmDetails({ ...({} as VmInfo), name: 'box', network: { forwardedPorts: [] } as unknown as VmInfo['network'], disks } as VmInfo);
  assert.match(text, /Disk work: +4096 MiB virtual, \d+\.\d MiB used on the host \(.*work\.ext4\)/);
  assert.match(text, /Disk root: +300 MiB virtual/);
});
