/**
 * A build killed together with the daemon, against the real kernel: a leftover build directory with
 * tmpfs mounts inside it (nested, as mmdebstrap's /dev and /dev/pts are) and a process still working in
 * it. The next daemon start (ImageService.reconcile with the real /proc, umount and rm) must kill the
 * process, unmount both, remove the directory and mark the build failed. Everything lives under a
 * temp directory in /tmp; the finally block undoes whatever a failing run leaves.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { mountsUnder } from '../../src/daemon/services/image/leftovers.js';
import { ImageService } from '../../src/daemon/services/image/service.js';
import { openDatabase } from '../../src/daemon/store/db.js';
import { ImageRepo } from '../../src/daemon/store/repos/images.js';
import { VmRepo } from '../../src/daemon/store/repos/vms.js';
import { Paths } from '../../src/shared/paths.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const skip = process.getuid?.() !== 0 ? 'needs root (mounts tmpfs)' : false;
const mounts = (dir: string) => mountsUnder(readFileSync('/proc/self/mountinfo', 'utf8'), dir);
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
  } catch {
    return false;
  }
};

void test(
  'reconcile kills, unmounts and removes a build left by a killed daemon',
  { skip, timeout: 60_000 },
  async () => {
    const home = scratchDir('banger-leftover-it-');
    const paths = new Paths(home);
    const buildDir = paths.imageBuildDir('deadbeef0001');
    const root = join(buildDir, 'rootfs.d');
    let sleeper: number | undefined;
    try {
      mkdirSync(root, { recursive: true });
      const mount = (...args: string[]) => {
        const r = spawnSync('mount', args, { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
      };
      mount('-t', 'tmpfs', 'banger-test', root);
      mkdirSync(join(root, 'dev'));
      mount('-t', 'tmpfs', 'banger-test', join(root, 'dev'));
      writeFileSync(join(root, 'dev', 'file'), 'x');
      const child = spawn('sleep', ['600'], { cwd: join(root, 'dev'), stdio: 'ignore', detached: true });
      child.unref();
      sleeper = child.pid!;
      assert.equal(mounts(buildDir).length, 2);
      assert.ok(alive(sleeper));

      const db = openDatabase(paths.database);
      const images = new ImageRepo(db);
      images.insert({
        id: 'deadbeef0001',
        name: 'dev',
        status: 'building',
        kernelVersion: null,
        files: [],
        params: { suite: 'bookworm', mirror: '', packages: [] },
        buildSeconds: null,
        error: null,
        createdAt: new Date().toISOString(),
      });
      const svc = new ImageService({
        paths,
        images,
        vms: new VmRepo(db),
        build: () => Promise.reject(new Error('unused')),
        log: silentLogger(),
      });
      await svc.reconcile();

      assert.equal(alive(sleeper), false, 'the process working in the build dir was killed');
      assert.deepEqual(mounts(buildDir), [], 'both tmpfs mounts are gone');
      assert.equal(existsSync(buildDir), false, 'the build dir is removed');
      assert.equal(images.byName('dev')?.status, 'failed');
      assert.match(images.byName('dev')?.error ?? '', /interrupted/);
      db.close();
    } finally {
      if (sleeper !== undefined && alive(sleeper)) process.kill(sleeper, 'SIGKILL');
      for (const m of mounts(home)) spawnSync('umount', ['-l', m]);
      if (mounts(home).length === 0) rmSync(home, { recursive: true, force: true });
    }
  },
);
