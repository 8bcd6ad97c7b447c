/**
 * Work disks through the daemon (in-process, real SQLite, real e2fsprogs): `vm.set` on a stopped VM grows its
 * work disk and records the new sizes, `vm.show` reports each disk; and a full host disk, on a small tmpfs
 * mounted as BANGER_HOME inside a mount namespace this test makes (`unshare -m`), fails create, start and a
 * grow with ResourceExhausted naming the path, leaving nothing behind. The namespace part is skipped, with the
 * reason printed, when not root or without unshare.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BangerClient } from '../../src/client/client.js';
import { ErrorCode } from '../../src/errors/index.js';
import { ImageMethods } from '../../src/protocol/image.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { Paths } from '../../src/shared/paths.js';
import { REPO_ROOT } from '../helpers/cli.js';
import type { RunningDaemon } from '../../src/daemon/daemon.js';
import { ext4Bytes, failureOf, startTestDaemon } from '../helpers/daemon-fixtures.js';
import { scratchDir } from '../helpers/scratch.js';

const MIB = 1024 * 1024;

void describe('vm.set and vm.show disks, daemon in-process', () => {
  const home = scratchDir('banger-disks-');
  const paths = new Paths(home);
  let daemon: RunningDaemon;
  let client: BangerClient;

  before(async () => {
    daemon = await startTestDaemon(paths);
    client = await BangerClient.connect(paths.socket);
    await client.call(ImageMethods.build, { name: 'tiny' });
  });
  after(async () => {
    client.close();
    await daemon.stop();
    rmSync(home, { recursive: true, force: true });
  });

  void it('a stopped VM gets more CPUs, memory and a bigger work disk; shrinking is refused and changes nothing', async () => {
    const made = await client.call(VmMethods.create, { name: 'grow', image: 'tiny', vmm: 'qemu', accel: 'tcg', cpus: 1, diskSizeMib: 64 });
    const work = join(made.dir, 'work.ext4');
    const disk = made.disks.find((d) => d.id === 'work')!;
    assert.deepEqual([disk.path, disk.virtualBytes], [work, 64 * MIB]);
    assert.equal(disk.hostBytes, statSync(work).blocks * 512);
    assert.ok(made.disks.some((d) => d.id === 'root'), 'the root overlay is reported too');

    const set = await client.call(VmMethods.set, { name: 'grow', cpus: 2, memoryMib: 2048, diskSizeMib: 1024 });
    assert.deepEqual([set.vcpus, set.memoryMib, set.diskSizeMib], [2, 2048, 1024]);
    assert.equal(set.disks.find((d) => d.id === 'work')!.virtualBytes, 1024 * MIB);
    assert.equal(ext4Bytes(work), 1024 * MIB, 'the filesystem fills the grown disk');
    execFileSync('e2fsck', ['-f', '-n', work], { stdio: 'ignore' });

    const shrink = await failureOf(client.call(VmMethods.set, { name: 'grow', diskSizeMib: 512 }));
    assert.equal(shrink.code, ErrorCode.InvalidArgument);
    assert.match(shrink.message, /cannot shrink/);
    const shown = await client.call(VmMethods.show, { name: 'grow' });
    assert.equal(shown.diskSizeMib, 1024);
    assert.equal(statSync(work).size, 1024 * MIB);
    assert.equal((await failureOf(client.call(VmMethods.set, { name: 'nope', cpus: 2 }))).code, ErrorCode.NotFound);
    assert.equal((await failureOf(client.call(VmMethods.set, { name: 'grow' }))).code, ErrorCode.InvalidArgument);
    await client.call(VmMethods.delete, { name: 'grow' });
  });
});

function namespaceSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (mounts a tmpfs in a new mount namespace)';
  const r = spawnSync('unshare', ['-m', 'true']);
  if (r.status !== 0) return `unshare -m does not work here: ${r.stderr?.toString().trim() || r.error?.message}`;
  return false;
}
const skip = namespaceSkip();
if (skip) process.stderr.write(`skipping the host-disk-full tests: ${skip}\n`);

interface DiskFullResult {
  made: { dir: string };
  create: { code: string; message: string; hint: string | null } | null;
  start: { code: string; message: string; hint: string | null } | null;
  grow: { code: string; message: string; hint: string | null } | null;
  names: string[];
  cli: { code: number; stderr: string } | null;
  vmDirs: string[];
  aFiles: string[];
  after: { state: string; diskSizeMib: number; workBytes: number };
}

void describe('a full host disk (tmpfs BANGER_HOME in a test mount namespace)', { skip, timeout: 120_000 }, () => {
  void it('create, start and a disk grow fail with ResourceExhausted naming the path, and leave nothing behind', () => {
    const home = scratchDir('banger-full-');
    try {
      const script = 'mount -t tmpfs -o size=48m,mode=0700 banger-full "$1" && exec "$2" --import tsx "$3" "$1" 12';
      const r = spawnSync(
        'unshare',
        ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', home, process.execPath, join(REPO_ROOT, 'test/helpers/disk-full-child.ts')],
        { encoding: 'utf8', cwd: REPO_ROOT, timeout: 100_000 },
      );
      assert.equal(r.status, 0, r.stderr);
      const got = JSON.parse(r.stdout.trim().split('\n').pop()!) as DiskFullResult;
      const vmsDir = join(home, 'vms');

      assert.equal(got.create?.code, ErrorCode.ResourceExhausted);
      assert.match(got.create.message, new RegExp(`not enough disk space in ${vmsDir}/\\w+ to create VM 'big': it needs 16 MiB free, has 12 MiB`));
      assert.match(got.create.hint ?? '', /free space/);
      assert.deepEqual(got.names, ['a'], 'the refused create left no record');
      assert.deepEqual(got.vmDirs, [got.made.dir.split('/').pop()], 'and no directory');

      assert.equal(got.start?.code, ErrorCode.ResourceExhausted);
      assert.match(got.start.message, new RegExp(`not enough disk space in ${got.made.dir} to start VM 'a': it needs 32 MiB free`));
      assert.equal(got.after.state, 'created', 'the VM is as it was');
      assert.ok(!got.aFiles.includes('console.log') && !got.aFiles.includes('handles.json'), `no boot files: ${got.aFiles.join(' ')}`);

      if (got.cli) {
        assert.equal(got.cli.code, 71, got.cli.stderr);
        assert.match(got.cli.stderr, /not enough disk space in .* to start VM 'a': it needs 32 MiB free/);
      } else process.stderr.write('dist/banger.js is missing (run `npm run build`): the CLI exit code was not checked\n');

      assert.equal(got.grow?.code, ErrorCode.ResourceExhausted);
      assert.match(got.grow.message, /to grow the work disk of VM 'a': it needs 24 MiB free/);
      assert.equal(got.after.diskSizeMib, 1024);
      assert.equal(got.after.workBytes, 1024 * MIB, 'the disk file is untouched');
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
