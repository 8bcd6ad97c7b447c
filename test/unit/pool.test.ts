/**
 * Warm pools without VMs: which requests a parked VM fits, and the pool service's hand-over and its
 * fallbacks against a fake VM service (the real-VM proof: e2e/pool.test.ts).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PoolService, matches, type PoolVms } from '../../src/daemon/services/pool/service.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import { Paths } from '../../src/shared/paths.js';
import type { VmCreateParams, VmInfo } from '../../src/protocol/vm.js';
import { scratchDir } from '../helpers/scratch.js';

const rec = (over: Partial<VmRecord> = {}): VmRecord =>
  ({
    id: 'id1', name: 'pool-default-aaaaaa', imageId: 'img', state: 'running', vcpus: 2, memoryMib: 1024, diskSizeMib: 4096,
    vmm: 'qemu', accelChoice: 'auto', accel: 'tcg', networkMode: 'loopback', hostAddress: '127.77.0.2', sshPort: 22,
    guestAddress: '10.0.2.15', egress: false, mac: '52:54:00:00:00:01', dir: '/x', lastError: null, createdAt: 't',
    startedAt: 't', updatedAt: 't', workspace: null, agent: true, synced: null, pool: 'default', ...over,
  }) as VmRecord;

test('a request fits a parked VM only when its machine is the pool\'s', () => {
  const v = rec();
  const yes: VmCreateParams[] = [{}, { start: true, cpus: 2, memoryMib: 1024 }, { vmm: 'auto', accel: 'auto' }, { vmm: 'qemu', accel: 'tcg' }];
  for (const p of yes) assert.equal(matches(p, v, 'loopback'), true, JSON.stringify(p));
  const no: VmCreateParams[] = [{ cpus: 1 }, { memoryMib: 2048 }, { diskSizeMib: 8192 }, { network: 'tap' }, { egress: true }, { agent: false }, { vmm: 'firecracker' }, { accel: 'kvm' }];
  for (const p of no) assert.equal(matches(p, v, 'loopback'), false, JSON.stringify(p));
  // A daemon whose default network is tap boots tap VMs: a loopback pool VM does not fit an unflagged request.
  assert.equal(matches({}, v, 'tap'), false);
});

/** A fake VM service holding one parked pool VM; `failOn` makes that step of the hand-over throw. */
function fakeVms(failOn?: 'resume') {
  const records = [rec()];
  const vmDir = scratchDir('banger-pool-vm-');
  const vp = { hostKeyPublic: join(vmDir, 'key.pub'), knownHosts: join(vmDir, 'known_hosts') };
  writeFileSync(vp.hostKeyPublic, 'ssh-ed25519 AAAAC3Nza pool-default-aaaaaa.vm\n');
  const calls: string[] = [];
  const scripts: string[] = [];
  const agent = {
    setClock: async () => void calls.push('clock'),
    exec: async (...args: unknown[]) => {
      calls.push('exec');
      scripts.push(JSON.stringify(args));
      const proc = {
        pid: 1,
        stdout: (await import('node:stream')).Readable.from([]),
        stderr: (await import('node:stream')).Readable.from([]),
        stdin: null,
        exited: Promise.resolve({ code: 0, signal: null }),
        kill() {},
        resize() {},
      };
      return proc;
    },
  };
  const vms: PoolVms = {
    create: async () => {
      calls.push('create');
      throw new Error('no boots in this test');
    },
    start: async () => {
      throw new Error('no boots in this test');
    },
    delete: async (name) => {
      calls.push(`delete ${name}`);
      records.splice(records.findIndex((r) => r.name === name), 1);
      return { deleted: name };
    },
    show: (name) => ({ name }) as VmInfo,
    withRunning: async (name, fn) => {
      const vm = records.find((r) => r.name === name)!;
      return fn({ vm, vp: vp as never, handle: {} as never, driver: {} as never, hasAgent: true });
    },
    records: () => records,
    pool: {
      park: async () => {},
      unpark: async () => {
        if (failOn === 'resume') throw new Error('QMP cont failed');
        calls.push('resume');
      },
      agent: async () => agent as never,
      adopt: (id, name) => {
        const r = records.find((x) => x.id === id)!;
        Object.assign(r, { name, pool: null });
        return r;
      },
      recordSynced: () => {},
    },
  };
  return { vms, records, calls, scripts, vp };
}

async function service(vms: PoolVms, refillAfterTakeMs?: number) {
  const home = scratchDir('banger-pool-');
  writeFileSync(join(home, 'pools.json'), '{"default": 1}');
  const log = { info() {}, warn() {}, error() {}, debug() {}, child() { return log; } };
  const pool = new PoolService({ paths: new Paths(home), vms, requireImage: () => {}, defaultNetwork: 'loopback', log: log as never, retryMs: 10, refillAfterTakeMs });
  // The pool learns which VMs are parked as it parks them; this one was parked by "an earlier fill".
  (pool as unknown as { parked: Set<string> }).parked.add('id1');
  return pool;
}

test('take: nothing is taken for --no-pool, other options, or without a start', async () => {
  const { vms, calls } = fakeVms();
  const pool = await service(vms);
  for (const p of [{ start: true, pool: false }, { start: true, cpus: 1 }, {}] as VmCreateParams[])
    assert.equal(await pool.take(p, () => {}), undefined);
  assert.deepEqual(calls, []);
  pool.close();
});

test('take: the parked VM becomes the user\'s: renamed, its key pinned under the name, resumed, clock and hostname set', async () => {
  const { vms, records, calls, scripts, vp } = fakeVms();
  const pool = await service(vms);
  const steps: string[] = [];
  const got = await pool.take({ start: true, name: 'fix-42', sync: false }, (ev) => steps.push(ev.kind === 'step' ? ev.step : ev.kind));
  assert.equal(got?.name, 'fix-42');
  assert.deepEqual(steps, ['take a VM from the warm pool']);
  assert.equal(records[0]!.name, 'fix-42');
  assert.equal(records[0]!.pool, null, 'no longer a pool VM');
  assert.equal(readFileSync(vp.knownHosts, 'utf8'), 'fix-42.vm ssh-ed25519 AAAAC3Nza pool-default-aaaaaa.vm\n');
  assert.deepEqual(calls.slice(0, 1), ['resume']);
  // One guest process sets the clock (it stood still while parked) and the name.
  assert.deepEqual(calls.slice(1), ['exec']);
  assert.equal(scripts.length, 1);
  assert.match(scripts[0]!, /"clock=1"/);
  assert.match(scripts[0]!, /"name=fix-42"/);
  // Taken once: a second request finds nothing parked.
  assert.equal(await pool.take({ start: true, sync: false }, () => {}), undefined);
  pool.close();
});

test('take: a hand-over that fails deletes that VM and lets the caller boot one', async () => {
  const { vms, records, calls } = fakeVms('resume');
  const pool = await service(vms);
  assert.equal(await pool.take({ start: true, name: 'fix-42', sync: false }, () => {}), undefined);
  assert.deepEqual(records, [], 'the VM that could not be handed over is gone');
  assert.ok(calls.some((c) => c.startsWith('delete ')));
  pool.close();
});

test('take: the replacement boots only after the taken VM has had the host to itself for a moment', async () => {
  const { vms, calls } = fakeVms();
  const pool = await service(vms, 400);
  try {
    const t0 = Date.now();
    assert.equal((await pool.take({ start: true, name: 'fix-42', sync: false }, () => {}))?.name, 'fix-42');
    await sleep(150);
    assert.equal(calls.includes('create'), false, 'no boot beside the command the user just asked for');
    while (!calls.includes('create')) {
      assert.ok(Date.now() - t0 < 5000, 'the pool never started its refill');
      await sleep(20);
    }
    assert.ok(Date.now() - t0 >= 400, `refill began ${Date.now() - t0} ms after the take`);
  } finally {
    pool.close();
  }
});

test('take: a daemon stopping before the refill is due boots nothing', async () => {
  const { vms, calls } = fakeVms();
  const pool = await service(vms, 100);
  try {
    await pool.take({ start: true, name: 'fix-42', sync: false }, () => {});
  } finally {
    pool.close();
  }
  await sleep(300);
  assert.equal(calls.includes('create'), false);
});
