import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { migrate, openDatabase, schemaVersion } from '../../src/daemon/store/db.js';
import { MIGRATIONS } from '../../src/daemon/store/migrations/index.js';
import { ImageRepo } from '../../src/daemon/store/repos/images.js';
import { VmRepo, type VmRecord } from '../../src/daemon/store/repos/vms.js';
import { scratchDir } from '../helpers/scratch.js';

function tempDb() {
  const dir = scratchDir('banger-store-');
  return { path: join(dir, 'state.db'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

test('migrations apply from an empty database, are recorded, and are idempotent', () => {
  const t = tempDb();
  try {
    const db = openDatabase(t.path);
    assert.equal(schemaVersion(db), Math.max(...MIGRATIONS.map((m) => m.version)));
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.pragma('foreign_keys', { simple: true }), 1);
    assert.equal(db.pragma('synchronous', { simple: true }), 2, 'FULL: every commit survives a power loss');
    assert.deepEqual(migrate(db), []);
    db.close();
    const again = openDatabase(t.path);
    assert.equal(schemaVersion(again), MIGRATIONS.length);
    again.close();
  } finally {
    t.cleanup();
  }
});

test('every older schema version migrates to the latest', () => {
  for (let v = 0; v < MIGRATIONS.length; v++) {
    const db = new Database(':memory:');
    migrate(db, MIGRATIONS.slice(0, v));
    assert.equal(schemaVersion(db), v);
    migrate(db);
    assert.equal(schemaVersion(db), MIGRATIONS.length);
    db.close();
  }
});

test('a failing migration leaves the database at the previous version (transaction)', () => {
  const db = new Database(':memory:');
  const broken = [...MIGRATIONS, { version: 999, name: 'broken', sql: 'CREATE TABLE x (a); THIS IS NOT SQL;' }];
  assert.throws(() => migrate(db, broken), (e: unknown) => e instanceof BangerError && /version 999 \(broken\)/.test(e.message));
  assert.equal(schemaVersion(db), MIGRATIONS.length);
  assert.equal((db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'x'").get() as { n: number }).n, 0);
});

test('a database newer than this banger is refused with a message saying to upgrade', () => {
  const db = new Database(':memory:');
  migrate(db, [...MIGRATIONS, { version: 50, name: 'future', sql: 'SELECT 1' }]);
  assert.throws(
    () => migrate(db),
    (e: unknown) => e instanceof BangerError && e.code === ErrorCode.FailedPrecondition && /upgrade banger/.test(e.hint ?? ''),
  );
});

test('a state database that is not one is refused with its path and what to do', () => {
  const t = tempDb();
  try {
    writeFileSync(t.path, 'this is not an SQLite database, it is long enough to have a header '.repeat(20));
    assert.throws(
      () => openDatabase(t.path),
      (e: unknown) =>
        e instanceof BangerError &&
        e.code === ErrorCode.FailedPrecondition &&
        e.message.includes(t.path) &&
        /move a damaged file aside/.test(e.hint ?? ''),
    );
  } finally {
    t.cleanup();
  }
});

test('repos round-trip records; an image in use cannot be deleted (foreign key)', () => {
  const db = new Database(':memory:');
  db.pragma('foreign_keys = ON');
  migrate(db);
  const images = new ImageRepo(db);
  const vms = new VmRepo(db);
  images.insert({
    id: 'img1',
    name: 'default',
    status: 'ready',
    kernelVersion: '6.1',
    files: [{ role: 'kernel', path: '/k', sizeBytes: 1, sha256: 'ab' }],
    params: { suite: 'bookworm', mirror: 'm', packages: [] },
    buildSeconds: 1,
    error: null,
    createdAt: 'now',
  });
  const vm: VmRecord = {
    id: 'vm1', name: 'a', imageId: 'img1', state: 'created', vcpus: 1, memoryMib: 512, diskSizeMib: 1024,
    vmm: 'qemu', accelChoice: 'auto', accel: null, networkMode: 'loopback', hostAddress: '127.0.0.1', sshPort: 2222,
    guestAddress: '10.0.2.15', egress: false, mac: '52:54:00:00:00:01', dir: '/d', lastError: null,
    createdAt: 't', startedAt: null, updatedAt: 't', workspace: null, agent: true, synced: null,
    pool: null,
  };
  vms.insert(vm);
  assert.deepEqual(vms.byName('a'), vm);
  assert.equal(vms.update('vm1', { state: 'running', accel: 'tcg' }).state, 'running');
  assert.equal(vms.byId('vm1')?.accel, 'tcg');
  assert.deepEqual(vms.namesUsingImage('img1'), ['a']);
  assert.deepEqual([...vms.usedSshPorts()], [2222]);
  assert.throws(() => images.delete('img1'), /FOREIGN KEY/);
  assert.throws(() => vms.insert({ ...vm, id: 'vm2' }), /UNIQUE/);
  vms.delete('vm1');
  images.delete('img1');
  assert.equal(images.list().length, 0);
});

test('migration 2 keeps v1 VMs (no workspace) and stores a workspace record', () => {
  const db = new Database(':memory:');
  db.pragma('foreign_keys = ON');
  migrate(db, MIGRATIONS.filter((m) => m.version === 1));
  db.prepare(
    `INSERT INTO images (id, name, status, params_json, created_at) VALUES ('img1', 'default', 'ready', '{}', 'now')`,
  ).run();
  db.prepare(
    `INSERT INTO vms (id, name, image_id, state, vcpus, memory_mib, disk_size_mib, vmm, host_address, ssh_port,
       guest_address, mac, dir, created_at, updated_at)
     VALUES ('vm1', 'old', 'img1', 'stopped', 1, 512, 1024, 'qemu', '127.0.0.1', 2222, '10.0.2.15', 'm', '/d', 't', 't')`,
  ).run();
  migrate(db);
  const vms = new VmRepo(db);
  assert.equal(vms.byName('old')?.workspace, null);
  const workspace = {
    guestPath: "/root/it's",
    sourcePath: '/home/u/repo',
    headCommit: 'a'.repeat(40),
    baseCommit: 'b'.repeat(40),
    includeUntracked: true,
    preparedAt: '2026-01-01T00:00:00.000Z',
  };
  vms.update('vm1', { workspace });
  assert.deepEqual(vms.byName('old')?.workspace, workspace);
  vms.update('vm1', { state: 'running' });
  assert.deepEqual(vms.byName('old')?.workspace, workspace, 'other updates keep the workspace');
});
