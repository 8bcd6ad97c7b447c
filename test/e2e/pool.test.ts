/**
 * Warm pools on real VMs: `pool set default --size 1` boots and parks a VM that `vm list` does not show;
 * `vm run` takes it (no boot: the progress says so) under the user's name, with that hostname in the guest
 * and its host key pinned under the new name (OpenSSH through `vm ssh` connects); the pool refills;
 * `--no-pool` and options other than the pool's boot a new VM; `kill -9` of bangerd while the pool refills
 * leaves no process or directory without a record; `--size 0` removes the pool and its VMs.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { E2E_HOME, banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { daemonPid, killAndWait, qemuProcesses, readStateDb, vmDirs } from '../helpers/chaos-probe.js';

const A = 'e2e-pool-a';
const B = 'e2e-pool-b';
const { step, printConsolesIfFailed } = e2eSteps();

interface PoolJson {
  image: string;
  size: number;
  ready: number;
  filling: number;
  taken: number;
  lastError: string | null;
}

const status = async () => JSON.parse((await bangerOk(['pool', 'status', '--json'])).stdout) as PoolJson[];

/** Waits until the default pool has `ready` VMs parked; fails with the pool's last error if it does not. */
async function parked(ready: number, timeoutMs = 600_000): Promise<PoolJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = (await status()).find((x) => x.image === 'default');
    if (p && p.ready === ready) return p;
    if (Date.now() > deadline) throw new Error(`the pool did not get ${ready} parked VM(s): ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const listed = async () => (JSON.parse((await bangerOk(['vm', 'list', '--json'])).stdout) as { name: string }[]).map((v) => v.name);

void describe('warm pools (real VMs)', { timeout: 1_700_000 }, () => {
  /** VMs taken from the pool since the daemon started, before this suite took one. */
  let takenBefore = 0;
  const cleanup = async () => {
    await banger(['pool', 'set', 'default', '--size', '0']);
    for (const vm of [A, B]) await banger(['vm', 'delete', '--force', vm]);
  };
  before(cleanup);
  after(async () => {
    printConsolesIfFailed();
    await cleanup();
  });

  step('pool set parks a VM of the image; vm list does not show it', async () => {
    const set = JSON.parse((await bangerOk(['pool', 'set', 'default', '--size', '1', '--json'])).stdout) as PoolJson;
    assert.equal(set.size, 1);
    const p = await parked(1);
    assert.equal(p.lastError, null);
    assert.ok(!(await listed()).some((n) => n.startsWith('pool-')), 'parked VMs are not the user\'s');
    // The parked VM exists on disk: one VM directory more than vm list shows.
    assert.equal(readdirSync(join(E2E_HOME, 'vms')).length, (await listed()).length + 1);
  });

  step('vm run takes the parked VM: no boot, the user\'s name and hostname, its host key pinned under that name', async () => {
    takenBefore = (await status())[0]!.taken;
    const before = Date.now() / 1000;
    const r = await bangerOk(['vm', 'run', '--name', A, '--', 'sh', '-c', 'hostname; cat /etc/hostname; date +%s.%N'], 0, { timeoutMs: 300_000 });
    const after = Date.now() / 1000;
    assert.match(r.stderr, /take a VM from the warm pool/);
    assert.doesNotMatch(r.stderr, /launch|wait for the guest/, 'nothing was booted');
    const [hostname, etcHostname, epoch] = r.stdout.trim().split('\n');
    assert.equal(hostname, A);
    assert.equal(etcHostname, A);
    // The clock was set when it was taken, however long it was parked: the host's, to within 2 s.
    assert.ok(Number(epoch) > before - 2 && Number(epoch) < after + 2, `guest clock ${epoch}, host ${before}..${after}`);
    assert.ok((await listed()).includes(A));
    // OpenSSH with the pinned key under the new name (StrictHostKeyChecking: a wrong pin fails).
    const ssh = await bangerOk(['vm', 'ssh', A, '--', 'hostname'], 0, { timeoutMs: 120_000 });
    assert.equal(ssh.stdout.trim(), A);
    assert.equal((await status())[0]!.taken, takenBefore + 1);
  });

  step('the pool refills; --no-pool and other options boot a new VM and leave the parked one', async () => {
    await parked(1);
    const cold = await bangerOk(['vm', 'run', '--no-pool', '--rm', '--', 'true'], 0, { timeoutMs: 600_000 });
    assert.match(cold.stderr, /launch/);
    assert.doesNotMatch(cold.stderr, /warm pool/);
    const other = await bangerOk(['vm', 'run', '--name', B, '--cpus', '1', '--', 'nproc'], 0, { timeoutMs: 600_000 });
    assert.equal(other.stdout.trim(), '1');
    assert.match(other.stderr, /launch/);
    assert.equal((await parked(1)).taken, takenBefore + 1, 'neither took the parked VM');
  });

  step('kill -9 of bangerd while the pool boots a VM: the next daemon leaves no orphan and fills the pool again', async () => {
    await bangerOk(['pool', 'set', 'default', '--size', '2']);
    // The second VM is booting now (the first is parked).
    const deadline = Date.now() + 120_000;
    while (!((await status())[0]!.filling > 0)) {
      if (Date.now() > deadline) throw new Error('the pool did not start booting a second VM');
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 3000)); // into the boot: QEMU runs, the record says starting
    await killAndWait(await daemonPid(E2E_HOME));
    const p = await parked(2); // the next CLI call starts a daemon, which removes both and boots two
    assert.equal(p.lastError, null);
    const { rows } = readStateDb(E2E_HOME);
    const ids = new Set(rows.map((r) => r.id));
    assert.deepEqual(qemuProcesses(E2E_HOME).filter((q) => !ids.has(q.vmId ?? '')), [], 'no QEMU without a record');
    assert.deepEqual(vmDirs(E2E_HOME).filter((d) => !ids.has(d)), [], 'no VM directory without a record');
    assert.equal(rows.filter((r) => r.name.startsWith('pool-default-')).length, 2);
  });

  step('--size 0 removes the pool and its parked VMs', async () => {
    await bangerOk(['pool', 'set', 'default', '--size', '0']);
    assert.deepEqual(await status(), []);
    assert.equal(readdirSync(join(E2E_HOME, 'vms')).length, (await listed()).length, 'no VM directory beyond the listed VMs');
  });
});
