import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { CommandRunner } from '../../src/shared/command.js';
import {
  processesUsing,
  removeBuildLeftovers,
  type LeftoverHost,
  type ProcessInfo,
} from '../../src/daemon/services/image/leftovers.js';
import { ImageService } from '../../src/daemon/services/image/service.js';
import { openDatabase } from '../../src/daemon/store/db.js';
import { ImageRepo, type ImageRecord } from '../../src/daemon/store/repos/images.js';
import { VmRepo } from '../../src/daemon/store/repos/vms.js';
import { Paths } from '../../src/shared/paths.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const DIR = '/var/lib/banger/images/.build-abc';
const proc = (pid: number, ppid: number, extra: Partial<ProcessInfo> = {}): ProcessInfo => ({
  pid,
  ppid,
  argv: ['x'],
  zombie: false,
  root: '/',
  cwd: '/',
  ...extra,
});

test('processesUsing: chrooted, cwd and command-line users of the directory plus their descendants', () => {
  const procs = [
    proc(1, 0, { argv: ['/sbin/init'] }),
    proc(10, 1, { argv: ['mmdebstrap', '--variant=minbase', 'bookworm', `${DIR}/rootfs.d`, 'http://deb'] }),
    proc(11, 10, { argv: ['apt-get', 'install'] }), // child of mmdebstrap: nothing of the dir in it
    proc(12, 11, { argv: ['/usr/lib/apt/methods/http'] }), // grandchild
    proc(20, 1, { root: `${DIR}/rootfs.d`, argv: ['dpkg'] }),
    proc(30, 1, { cwd: DIR }),
    proc(40, 1, { argv: ['tool', `--root=${DIR}`] }),
    proc(50, 1, { cwd: `${DIR}-other` }), // a sibling directory with the same prefix
    proc(60, 1, { cwd: DIR, zombie: true }),
    proc(70, 1, { cwd: DIR }), // "the daemon itself"
  ];
  assert.deepEqual(processesUsing(procs, DIR, 70), [10, 11, 12, 20, 30, 40]);
});

/** A fake host: a process table and mount table that kill and umount change. */
function fakeHost(opts: { procs: ProcessInfo[]; mounts: string[]; stuckMounts?: string[]; lazyOnly?: string[] }) {
  const log: string[] = [];
  let procs = [...opts.procs];
  let mounts = [...opts.mounts];
  const run: CommandRunner = async (cmd, args) => {
    log.push(`${cmd} ${args.join(' ')}`);
    const target = args.at(-1)!;
    const lazy = args[0] === '-l';
    if (opts.stuckMounts?.includes(target) || (opts.lazyOnly?.includes(target) && !lazy))
      return { code: 32, stdout: '', stderr: 'target is busy' };
    mounts = mounts.filter((m) => m !== target);
    return { code: 0, stdout: '', stderr: '' };
  };
  const host: LeftoverHost = {
    mountinfo: async () =>
      mounts.map((m, i) => `${100 + i} 22 0:${i} / ${m.replaceAll(' ', '\\040')} rw - tmpfs t rw`).join('\n') + '\n',
    processes: async () => procs,
    kill: (pid) => {
      log.push(`kill ${pid}`);
      // Removing the process before its mounts are unmounted is the order that matters.
      assert.ok(mounts.length === opts.mounts.length, 'processes are killed before anything is unmounted');
      procs = procs.filter((p) => p.pid !== pid);
    },
    run,
    remove: async (dir) => {
      log.push(`remove ${dir}`);
    },
    sleep: async () => undefined,
  };
  return { host, log, mounts: () => mounts };
}

const noLog = { info: () => undefined, warn: () => undefined };

test('removeBuildLeftovers: kill, then unmount deepest first (lazily if busy), then remove', async () => {
  const f = fakeHost({
    procs: [proc(1, 0), proc(10, 1, { cwd: DIR }), proc(11, 10)],
    mounts: ['/', `${DIR}/rootfs.d/proc`, `${DIR}/rootfs.d/dev`, `${DIR}/rootfs.d/dev/pts`, '/other'],
    lazyOnly: [`${DIR}/rootfs.d/dev`],
  });
  await removeBuildLeftovers(DIR, f.host, noLog);
  assert.deepEqual(f.log, [
    'kill 10',
    'kill 11',
    `umount ${DIR}/rootfs.d/dev/pts`,
    `umount ${DIR}/rootfs.d/proc`,
    `umount ${DIR}/rootfs.d/dev`,
    `umount -l ${DIR}/rootfs.d/dev`,
    `remove ${DIR}`,
  ]);
  assert.deepEqual(f.mounts(), ['/', '/other']);
});

test('removeBuildLeftovers never removes a directory that still has something mounted in it', async () => {
  const f = fakeHost({ procs: [], mounts: [`${DIR}/rootfs.d/sys`], stuckMounts: [`${DIR}/rootfs.d/sys`] });
  await assert.rejects(removeBuildLeftovers(DIR, f.host, noLog), /cannot unmount .*rootfs\.d\/sys/);
  assert.ok(!f.log.some((l) => l.startsWith('remove')), f.log.join('\n'));
});

function service(t: string, host: LeftoverHost, leftoverTimeoutMs?: number) {
  const paths = new Paths(t);
  mkdirSync(paths.imagesDir, { recursive: true });
  const db = openDatabase(paths.database);
  const images = new ImageRepo(db);
  const svc = new ImageService({
    paths,
    images,
    vms: new VmRepo(db),
    build: () => Promise.reject(new Error('no builds here')),
    log: silentLogger(),
    leftovers: host,
    leftoverTimeoutMs,
  });
  return { paths, images, svc, db };
}

const building = (id: string, name: string): ImageRecord => ({
  id,
  name,
  status: 'building',
  kernelVersion: null,
  files: [],
  params: { suite: 'bookworm', mirror: '', packages: [] },
  buildSeconds: null,
  error: null,
  createdAt: new Date(0).toISOString(),
});

test('ImageService.reconcile cleans every leftover build dir and marks interrupted builds failed, even when one cannot be cleaned', async () => {
  const t = scratchDir('banger-img-reconcile-');
  try {
    const paths = new Paths(t);
    const stuck = paths.imageBuildDir('stuck');
    const f = fakeHost({ procs: [], mounts: [`${stuck}/rootfs.d/dev`], stuckMounts: [`${stuck}/rootfs.d/dev`] });
    const removed: string[] = [];
    const host: LeftoverHost = {
      ...f.host,
      remove: async (dir) => {
        removed.push(dir);
        rmSync(dir, { recursive: true, force: true });
      },
    };
    const { images, svc, db } = service(t, host);
    images.insert(building('clean', 'a'));
    images.insert(building('stuck', 'b'));
    images.insert(building('nodir', 'c'));
    for (const id of ['clean', 'stuck', 'orphan']) {
      mkdirSync(join(paths.imageBuildDir(id), 'rootfs.d'), { recursive: true });
      writeFileSync(join(paths.imageBuildDir(id), 'rootfs.d', 'f'), 'x');
    }
    await svc.reconcile();
    assert.deepEqual(removed.sort(), [paths.imageBuildDir('clean'), paths.imageBuildDir('orphan')]);
    assert.equal(existsSync(paths.imageBuildDir('orphan')), false, 'a build dir without a record goes too');
    assert.equal(existsSync(stuck), true, 'never removed while something is mounted in it');
    assert.match(images.byName('a')!.error!, /^the build was interrupted \(bangerd stopped\)$/);
    assert.match(images.byName('b')!.error!, /interrupted.*\.build-stuck is still there: cannot unmount/);
    assert.equal(images.byName('c')!.status, 'failed');
    assert.ok(['a', 'b', 'c'].every((n) => images.byName(n)!.status === 'failed'));
    db.close();
  } finally {
    rmSync(t, { recursive: true, force: true });
  }
});

test('ImageService.reconcile gives up on a hanging cleanup after its timeout, and returns', async () => {
  const t = scratchDir('banger-img-reconcile-');
  try {
    const hang: LeftoverHost = {
      ...fakeHost({ procs: [], mounts: [] }).host,
      mountinfo: () => new Promise<string>(() => undefined), // e.g. a hung NFS mount
    };
    const { paths, images, svc, db } = service(t, hang, 200);
    images.insert(building('hung', 'h'));
    mkdirSync(paths.imageBuildDir('hung'));
    await svc.reconcile();
    assert.equal(images.byName('h')!.status, 'failed');
    assert.match(images.byName('h')!.error!, /took longer than 0\.2 s/);
    db.close();
  } finally {
    rmSync(t, { recursive: true, force: true });
  }
});
