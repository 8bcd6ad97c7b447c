import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { migrate } from '../../src/daemon/store/db.js';
import { ImageRepo } from '../../src/daemon/store/repos/images.js';
import { VmRepo, type VmRecord } from '../../src/daemon/store/repos/vms.js';
import { Paths } from '../../src/shared/paths.js';
import { silentLogger } from '../../src/shared/logger.js';
import { LiveVms } from '../../src/daemon/services/vm/live.js';
import { GuestPortForwarder } from '../../src/daemon/services/vm/forwards.js';
import { reconcileVms } from '../../src/daemon/services/vm/reconcile.js';
import { writeHandles } from '../../src/daemon/services/vm/handles.js';
import type { VmHandle, VmmDriver } from '../../src/daemon/vmm/driver.js';
import { scratchDir } from '../helpers/scratch.js';

function setup() {
  const root = scratchDir('banger-reconcile-');
  const paths = new Paths(root);
  mkdirSync(paths.vmsDir, { recursive: true });
  const db = new Database(':memory:');
  db.pragma('foreign_keys = ON');
  migrate(db);
  new ImageRepo(db).insert({
    id: 'img1', name: 'default', status: 'ready', kernelVersion: '6.1', files: [],
    params: { suite: 'bookworm', mirror: 'm', packages: [] }, buildSeconds: 1, error: null, createdAt: 'now',
  });
  const vms = new VmRepo(db);
  const alivePids = new Set<number>();
  const killed: number[] = [];
  const driver = {
    name: 'qemu',
    features: new Set(['qcow2']),
    isAlive: async (h: VmHandle) => alivePids.has(h.pid),
    waitExit: (_h: VmHandle, signal?: AbortSignal) =>
      new Promise<void>((_r, reject) => signal?.addEventListener('abort', () => reject(new Error('aborted')))),
    kill: async (h: VmHandle) => {
      killed.push(h.pid);
      alivePids.delete(h.pid);
    },
  } as unknown as VmmDriver;
  const log = silentLogger();
  const live = new LiveVms({ paths, log, clientKey: { privateKey: '' }, onUnexpectedExit: () => undefined });
  const forwarder = new GuestPortForwarder({
    log,
    publish: () => ({ add: async () => undefined, remove: async () => undefined, close: () => undefined }),
    session: () => Promise.reject(new Error('none')),
    handlesPath: () => '',
  });
  const tap = { supported: async () => ({ ok: false }), attach: async () => assert.fail(), detach: async () => undefined, reconcile: async () => undefined };
  let n = 0;
  async function vm(state: VmRecord['state'], opts: { files?: boolean; pid?: number } = {}): Promise<VmRecord> {
    const id = `vm${++n}`;
    const rec: VmRecord = {
      id, name: `v${n}`, imageId: 'img1', state, vcpus: 1, memoryMib: 512, diskSizeMib: 1024, vmm: 'qemu',
      accelChoice: 'auto', accel: 'tcg', networkMode: 'loopback', hostAddress: `127.77.0.${n + 1}`, sshPort: 22,
      guestAddress: '10.0.2.15', egress: false, mac: '52:54:00:00:00:01', dir: paths.vmDir(id), lastError: null,
      createdAt: 't', startedAt: null, updatedAt: 't', workspace: null, agent: true, synced: null, pool: null,
    };
    vms.insert(rec);
    const vp = paths.vm(id);
    mkdirSync(vp.dir, { recursive: true });
    if (opts.files !== false) writeFileSync(vp.knownHosts, 'k\n');
    if (opts.pid !== undefined) {
      alivePids.add(opts.pid);
      await writeHandles(vp.handles, { vmm: 'qemu', pid: opts.pid, startTime: 1, accel: 'tcg', controlSocketPath: vp.qmpSocket });
    }
    return rec;
  }
  const run = (processes: { pid: number; argv: string[] }[] = []) => {
    const killedOrphans: number[] = [];
    return reconcileVms({
      paths, vms, drivers: new Map([['qemu', driver]]), live, forwarder, tap, log,
      processes: async () => processes,
      killProcess: async (pid) => void killedOrphans.push(pid),
    }).then(() => killedOrphans);
  };
  return { root, paths, vms, live, killed, vm, run, cleanup: () => (live.detachAll(), rmSync(root, { recursive: true, force: true })) };
}

test('reconcile adopts running VMs, ends VMMs caught mid-boot or mid-stop, and leaves no VM in a transitional state', async () => {
  const t = setup();
  try {
    const running = await t.vm('running', { pid: 1001 });
    const booting = await t.vm('starting', { pid: 1002 });
    const stopping = await t.vm('stopping', { pid: 1003 });
    const deadRunning = await t.vm('running');
    await t.run();
    assert.ok(t.live.has(running.id));
    assert.equal(t.vms.byId(running.id)?.state, 'running');
    assert.deepEqual(t.killed.sort(), [1002, 1003]);
    assert.equal(t.vms.byId(booting.id)?.state, 'stopped');
    assert.match(t.vms.byId(booting.id)?.lastError ?? '', /while the VM was booting; start it again/);
    assert.equal(t.vms.byId(stopping.id)?.state, 'stopped');
    assert.equal(t.vms.byId(deadRunning.id)?.state, 'stopped');
    assert.ok(!existsSync(t.paths.vm(booting.id).handles), 'runtime files of the ended VMM are gone');
  } finally {
    t.cleanup();
  }
});

test('reconcile kills VMM processes of this state directory that no record owns, and only those', async () => {
  const t = setup();
  try {
    const running = await t.vm('running', { pid: 2001 });
    const mine = (id: string) => ['qemu-system-x86_64', '-name', `guest=banger-${id}`, '-chardev', `socket,id=qmp0,path=${t.paths.vmDir(id)}/qmp.sock`];
    const killed = await t.run([
      { pid: 2001, argv: mine(running.id) }, // adopted: kept
      { pid: 2002, argv: mine('deadbeef0000') }, // spawned, never recorded: killed
      { pid: 2003, argv: ['qemu-system-x86_64', '-name', 'guest=banger-x', '-chardev', 'path=/elsewhere/vms/x/qmp.sock'] }, // another home
      { pid: 2004, argv: ['vim', `${t.paths.vmsDir}/notes`] }, // not a VMM
    ]);
    assert.deepEqual(killed, [2002]);
  } finally {
    t.cleanup();
  }
});

test('reconcile removes unfinished creates, unfinished deletes and directories without a record', async () => {
  const t = setup();
  try {
    const half = await t.vm('created', { files: false });
    const gone = await t.vm('stopped');
    rmSync(t.paths.vmDir(gone.id), { recursive: true });
    const kept = await t.vm('stopped');
    mkdirSync(t.paths.vmDir('0123456789ab'));
    writeFileSync(join(t.paths.vmDir('0123456789ab'), 'root.qcow2'), 'x');
    await t.run();
    assert.equal(t.vms.byId(half.id), undefined);
    assert.ok(!existsSync(t.paths.vmDir(half.id)));
    assert.equal(t.vms.byId(gone.id), undefined);
    assert.ok(!existsSync(t.paths.vmDir('0123456789ab')));
    assert.equal(t.vms.byId(kept.id)?.state, 'stopped');
    assert.ok(existsSync(t.paths.vmDir(kept.id)));
  } finally {
    t.cleanup();
  }
});
