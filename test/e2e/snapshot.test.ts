/**
 * Snapshots on real VMs: a running VM with a file and a background process is snapshotted and keeps running;
 * two VMs restored from it have the file and the process, and each its own hostname, pinned SSH host key,
 * machine-id and RNG, with a sane clock; the snapshot cannot be deleted while they exist; cleanup leaves no
 * process and no file. The VMs are shared by the steps, in order.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { E2E_HOME, banger, bangerOk, e2eSteps, pidsMatching } from '../helpers/cli.js';
import { git, isolateGitConfig, tmp, write } from '../helpers/workspace-repo.js';

const SRC = 'e2e-snap-src';
const A = 'e2e-snap-a';
const B = 'e2e-snap-b';
const SNAP = 'e2e-snap';
const FORKS = ['e2e-fk-1', 'e2e-fk-2'];
const { step, printConsolesIfFailed } = e2eSteps();

interface VmJson {
  id: string;
  name: string;
  dir: string;
  network: { hostAddress: string };
}
interface SnapJson {
  id: string;
  madeByFork: boolean;
  restorable: boolean;
  name: string;
  pausedMs: number;
  hostBytes: number;
  memoryMib: number;
  dir: string;
  dependents: string[];
}

const show = async (vm: string) => JSON.parse((await bangerOk(['vm', 'show', vm, '--json'])).stdout) as VmJson;
const guest = async (vm: string, script: string) => (await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c', script])).stdout;

/** What a guest says about itself, in one exec. */
async function probe(vm: string) {
  const before = Date.now() / 1000;
  const out = await guest(
    vm,
    'hostname; cat /root/marker; pgrep -f "sleep 1000" >/dev/null && echo proc-yes || echo proc-no; cat /etc/machine-id; ' +
      'head -c 16 /dev/urandom | od -An -x | tr -d " \\n"; echo; date +%s.%N; cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub',
  );
  const [hostname, marker, proc, machineId, random, epoch, hostKey] = out.trim().split('\n');
  return { hostname, marker, proc, machineId, random, epoch: Number(epoch), before, after: Date.now() / 1000, hostKey };
}

void describe('snapshots: take, restore twice, delete (real VMs)', { timeout: 1_700_000 }, () => {
  let snap: SnapJson;

  /** Every VM and snapshot this suite makes, gone (each on its own: one missing must not stop the rest). */
  const cleanup = async () => {
    for (const vm of [A, B, ...FORKS, SRC]) await banger(['vm', 'delete', '--force', vm]);
    const snaps = JSON.parse((await banger(['snapshot', 'list', '--json'])).stdout || '[]') as SnapJson[];
    for (const s of snaps.filter((x) => x.name.startsWith('e2e-fk-'))) await banger(['snapshot', 'delete', s.name]);
    await banger(['snapshot', 'delete', SNAP]);
  };

  before(async () => {
    await cleanup();
    await bangerOk(['vm', 'create', '--name', SRC, '--start', '--cpus', '1', '--memory', '768M'], 0, { timeoutMs: 900_000 });
    // Snapshots need the guest agent (it gives a restored VM its identity): wait until it answers.
    const deadline = Date.now() + 120_000;
    while ((await banger(['vm', 'stats', SRC])).code !== 0) {
      if (Date.now() > deadline) throw new Error('the guest agent did not answer');
      await new Promise((r) => setTimeout(r, 500));
    }
    await guest(SRC, 'echo snapshot-me > /root/marker && sync; (nohup sleep 1000 >/dev/null 2>&1 &)');
  });

  after(async () => {
    printConsolesIfFailed();
    await cleanup();
  });

  step('a snapshot the host disk cannot hold fails first (71), leaves no file, and the VM runs on', async (t) => {
    // The snapshots directory on a 64 MiB filesystem: the 768 MiB guest's memory alone does not fit.
    const dir = join(E2E_HOME, 'snapshots');
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'tmpfs', dir], { encoding: 'utf8' });
    if (mounted.status !== 0) return t.skip(`cannot mount a small filesystem on ${dir} (needs root): ${mounted.stderr.trim()}`);
    try {
      const before = readdirSync((await show(SRC)).dir).sort();
      const r = await banger(['vm', 'snapshot', SRC, '--name', 'e2e-snap-full']);
      assert.equal(r.code, 71, r.stderr);
      assert.match(r.stderr, /not enough disk space .* to snapshot VM 'e2e-snap-src'/);
      assert.deepEqual(readdirSync(dir), [], 'nothing is left in the snapshots directory');
      assert.deepEqual(readdirSync((await show(SRC)).dir).sort(), before, 'no new disk layer for the VM');
    } finally {
      spawnSync('umount', [dir]);
    }
    assert.equal((await probe(SRC)).proc, 'proc-yes');
    assert.equal((JSON.parse((await bangerOk(['snapshot', 'list', '--json'])).stdout) as SnapJson[]).some((s) => s.name === 'e2e-snap-full'), false);
  });

  step('vm snapshot saves a running VM; it keeps running with its file and process', async () => {
    snap = JSON.parse((await bangerOk(['vm', 'snapshot', SRC, '--name', SNAP, '--json'], 0, { timeoutMs: 300_000 })).stdout) as SnapJson;
    assert.equal(snap.name, SNAP);
    assert.ok(snap.pausedMs > 0, 'the pause is measured');
    assert.deepEqual(snap.dependents, [SRC], 'the source VM now runs on layers over the snapshot');
    // No full copy of a disk: the snapshot costs its memory stream and the overlays' used blocks.
    assert.ok(snap.hostBytes < snap.memoryMib * 1024 * 1024 + 64 * 1024 * 1024, `snapshot takes ${snap.hostBytes} bytes`);
    const p = await probe(SRC);
    assert.equal(p.hostname, SRC);
    assert.equal(p.marker, 'snapshot-me');
    assert.equal(p.proc, 'proc-yes');
    // The source keeps writing, on its new layer, and it is not seen by VMs restored from the snapshot.
    await guest(SRC, 'echo later > /root/after-snapshot && sync');
    const list = JSON.parse((await bangerOk(['snapshot', 'list', '--json'])).stdout) as SnapJson[];
    assert.ok(list.some((s) => s.name === SNAP));
  });

  step('two VMs restored from it: the files and processes, each its own identity, a sane clock', async () => {
    await bangerOk(['vm', 'create', '--from', SNAP, '--name', A, '--start'], 0, { timeoutMs: 600_000 });
    await bangerOk(['vm', 'create', '--from', SNAP, '--name', B, '--start'], 0, { timeoutMs: 600_000 });
    const src = await probe(SRC);
    const a = await probe(A);
    const b = await probe(B);
    for (const [name, p] of [[A, a], [B, b]] as const) {
      assert.equal(p.hostname, name);
      assert.equal(p.marker, 'snapshot-me', 'the file written before the snapshot');
      assert.equal(p.proc, 'proc-yes', 'the process started before the snapshot still runs');
      // The guest's clock, read while the host waited for it, is the host's to within 2 s (it stood still
      // from the snapshot until the restore set it).
      assert.ok(p.epoch > p.before - 2 && p.epoch < p.after + 2, `guest clock ${p.epoch}, host ${p.before}..${p.after}`);
      // The key the guest serves is the one banger pinned for this VM (exec above went over the agent; ssh checks it).
      const pinned = readFileSync(join((await show(name)).dir, 'ssh_host_ed25519_key.pub'), 'utf8').split(' ')[1];
      assert.equal(p.hostKey, pinned);
      assert.equal((await bangerOk(['vm', 'ssh', name, '--', 'hostname'])).stdout.trim(), name, 'SSH with the pinned key');
      assert.equal((await banger(['vm', 'exec', name, '--', 'test', '-e', '/root/after-snapshot'])).code, 1);
    }
    assert.equal(new Set([src.hostKey, a.hostKey, b.hostKey]).size, 3, 'three SSH host keys');
    assert.equal(new Set([src.machineId, a.machineId, b.machineId]).size, 3, 'three machine-ids');
    assert.equal(new Set([src.random, a.random, b.random]).size, 3, 'three different /dev/urandom reads');
    // Each took the identity program its snapshot's guest held, started before the save (none was started
    // anew in the restored guest); the source still holds its own, for a later snapshot.
    const logged = readFileSync(join(E2E_HOME, 'logs', 'bangerd.log'), 'utf8').split('\n');
    for (const name of [A, B]) assert.ok(!logged.some((l) => l.includes(`"vm":"${name}"`) && l.includes('no program held')), name);
    assert.equal((await banger(['vm', 'exec', SRC, '--', 'pgrep', '-f', ' args=-$'])).code, 0, 'the source holds the identity program');
    assert.notEqual((await show(A)).network.hostAddress, (await show(B)).network.hostAddress);
    const shown = JSON.parse((await bangerOk(['snapshot', 'show', SNAP, '--json'])).stdout) as SnapJson;
    assert.deepEqual([...shown.dependents].sort(), [A, B, SRC].sort());
  });

  step("the restored VMs map the snapshot's memory file copy-on-write instead of loading it", async () => {
    const ram = join(snap.dir, 'memory.ram');
    // The RAM is its own file, not in the state stream (which is device state only).
    assert.ok(existsSync(ram), 'memory.ram exists');
    assert.ok(readFileSync(join(snap.dir, 'snapshot.json'), 'utf8').includes('"ram": "file"'));
    const stateBytes = readFileSync(join(snap.dir, 'state.bin')).length;
    assert.ok(stateBytes < 16 * 1024 * 1024, `state.bin is ${stateBytes} bytes`);
    for (const vm of [A, B]) {
      const { pid } = JSON.parse((await bangerOk(['vm', 'show', vm, '--json'])).stdout) as { pid: number };
      const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith(ram));
      assert.ok(maps.length > 0, `${vm}'s QEMU maps ${ram}`);
      // Private ('p'): what the guest writes stays its own and never reaches the file the other VM maps.
      for (const l of maps) assert.equal(l.split(/\s+/)[1]![3], 'p', l);
    }
  });

  /** The host repo the source VM's workspace was imported from (made in the fork step). */
  let hostRepo = '';

  step('vm fork: a second snapshot of the same VM, and two running copies of it now', async () => {
    await guest(SRC, 'echo forked > /root/fork-marker && sync');
    // The source has a workspace with an edit made in the guest, and a session running, when it is forked.
    isolateGitConfig();
    hostRepo = join(tmp('banger-fork-repo-'), 'app');
    write(hostRepo, 'src/lib.txt', 'one\ntwo\nthree\n');
    write(hostRepo, 'README', 'app\n');
    git(hostRepo, 'init', '-q');
    git(hostRepo, 'add', '-A');
    git(hostRepo, 'commit', '-q', '-m', 'base');
    await bangerOk(['vm', 'workspace', 'prepare', SRC, hostRepo], 0, { timeoutMs: 300_000 });
    await guest(SRC, 'cd /root/app && echo four >> src/lib.txt');
    await bangerOk(['vm', 'session', 'start', SRC, '--name', 'echo', '--', 'sh', '-c', 'while read l; do echo "got:$l"; done']);
    const forked = await bangerOk(['vm', 'fork', SRC, '--count', '2', '--name', 'e2e-fk', '--json'], 0, { timeoutMs: 900_000 });
    const r = JSON.parse(forked.stdout) as { snapshot: SnapJson; vms: VmJson[] };
    assert.deepEqual(r.vms.map((v) => v.name).sort(), FORKS);
    // The forks start side by side: each one's progress steps carry its name.
    const steps = forked.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => (JSON.parse(l) as { progress: { kind: string; step?: string; subject?: string } }).progress)
      .filter((p) => p.kind === 'step');
    for (const f of FORKS) assert.ok(steps.some((p) => p.subject === f && p.step === 'new identity'), `${f}'s steps are labelled`);
    for (const f of FORKS) {
      const p = await probe(f);
      assert.equal(p.hostname, f);
      assert.equal(p.proc, 'proc-yes');
      assert.equal(await guest(f, 'cat /root/fork-marker'), 'forked\n');
    }
    // The source ran on through both snapshots.
    assert.equal(await guest(SRC, 'cat /root/fork-marker /root/after-snapshot'), 'forked\nlater\n');
    const forkSnap = r.snapshot.name;
    assert.equal(r.snapshot.madeByFork, true, "the fork's own snapshot, not one the user took");
    // Its copies run from the memory they mapped: the snapshot let its memory go, and keeps the disks they are layered on.
    assert.equal(r.snapshot.restorable, false);
    assert.deepEqual(readdirSync(r.snapshot.dir).filter((f) => f === 'memory.ram' || f === 'state.bin'), []);
    assert.equal((await banger(['snapshot', 'delete', forkSnap])).code, 67);
    // The same fork again, one more: refused (66) before anything is made, naming the names in use.
    const snapsBefore = (JSON.parse((await bangerOk(['snapshot', 'list', '--json'])).stdout) as SnapJson[]).length;
    const again = await banger(['vm', 'fork', SRC, '--count', '3', '--name', 'e2e-fk']);
    assert.equal(again.code, 66);
    assert.match(again.stderr, /'e2e-fk-1', 'e2e-fk-2' already exist/);
    assert.equal((await banger(['vm', 'show', 'e2e-fk-3'])).code, 65, 'no third fork');
    assert.equal((JSON.parse((await bangerOk(['snapshot', 'list', '--json'])).stdout) as SnapJson[]).length, snapsBefore, 'no snapshot');
  });

  step("each fork has the source's workspace edit and session; its export is its own patch; compare shows them", async () => {
    // Each fork goes its own way from the same state.
    await guest(FORKS[0]!, 'cd /root/app && sed -i s/two/TWO/ src/lib.txt && echo fix > fixed.txt');
    await guest(FORKS[1]!, 'cd /root/app && rm README');
    for (const [i, f] of FORKS.entries()) {
      const list = JSON.parse((await bangerOk(['vm', 'session', 'list', f, '--json'])).stdout) as { name: string; state: string }[];
      assert.deepEqual(list.map((x) => `${x.name} ${x.state}`), ['echo running'], `${f}: the session came along`);
      await bangerOk(['vm', 'session', 'send', f, 'echo', `hello ${i}`]);
      let logs = '';
      for (let n = 0; n < 40 && !logs.includes(`got:hello ${i}`); n++) {
        if (n > 0) await new Promise((res) => setTimeout(res, 250));
        logs = (await bangerOk(['vm', 'session', 'logs', f, 'echo'])).stdout;
      }
      assert.equal(logs, `got:hello ${i}\n`, `${f}: the session answers, and only that fork's input`);
    }
    // Each fork's patch applies to the host repo the source was imported from.
    for (const [f, files] of [
      [FORKS[0]!, ['fixed.txt', 'src/lib.txt']],
      [FORKS[1]!, ['README', 'src/lib.txt']],
    ] as const) {
      const patch = await bangerOk(['vm', 'workspace', 'export', f]);
      const check = spawnSync('git', ['-C', hostRepo, 'apply', '--check', '--numstat', '-'], { input: patch.stdout, encoding: 'utf8' });
      assert.equal(check.status, 0, check.stderr);
      assert.deepEqual(check.stdout.trim().split('\n').map((l) => l.split('\t')[2]).sort(), [...files], f);
    }
    const cmp = await bangerOk(['vm', 'workspace', 'compare', ...FORKS, '--check', 'test -f fixed.txt', '--json']);
    const r = JSON.parse(cmp.stdout) as {
      sameBase: boolean;
      vms: { vm: string; files: { path: string; linesAdded: number; linesRemoved: number }[]; check: { code: number } }[];
    };
    assert.equal(r.sameBase, true);
    const summary = r.vms.map((v) => ({
      vm: v.vm,
      files: v.files.map((x) => `${x.path} +${x.linesAdded} -${x.linesRemoved}`),
      check: v.check.code,
    }));
    assert.deepEqual(summary, [
      { vm: FORKS[0], files: ['fixed.txt +1 -0', 'src/lib.txt +2 -1'], check: 0 },
      { vm: FORKS[1], files: ['README +0 -1', 'src/lib.txt +1 -0'], check: 1 },
    ]);
    const text = await bangerOk(['vm', 'workspace', 'compare', ...FORKS, '--check', 'test -f fixed.txt']);
    assert.match(text.stdout, new RegExp(`^${FORKS[0]}\\s+2\\s+\\+3\\s+-1\\s+exit 0 `, 'm'));
    assert.match(text.stdout, new RegExp(`^${FORKS[1]}\\s+2\\s+\\+1\\s+-1\\s+exit 1 `, 'm'));
  });

  step('vm run --from runs a command in a fresh restored VM and --rm removes it', async () => {
    const r = await bangerOk(['vm', 'run', '--from', SNAP, '--rm', '--', 'cat', '/root/marker'], 0, { timeoutMs: 600_000 });
    assert.equal(r.stdout, 'snapshot-me\n');
  });

  step("a snapshot VMs depend on is not deleted (67); once they are gone it is, leaving nothing; a fork's own goes by itself", async () => {
    const refused = await banger(['snapshot', 'delete', SNAP]);
    assert.equal(refused.code, 67);
    assert.match(refused.stderr, /in use/);
    assert.match(refused.stderr, /hint: .*banger vm delete/);
    assert.ok(existsSync(snap.dir));
    const ids = await Promise.all([SRC, A, B, ...FORKS].map(async (n) => (await show(n)).id));
    for (const vm of [A, B, ...FORKS]) await bangerOk(['vm', 'delete', '--force', vm]);
    // The fork's snapshot stays while its source runs on it; the user's stays until they delete it.
    const listed = async () => (JSON.parse((await bangerOk(['snapshot', 'list', '--json'])).stdout) as SnapJson[]).map((s) => s.name);
    assert.equal((await listed()).filter((n) => n.startsWith('e2e-fk-')).length, 1);
    await bangerOk(['vm', 'delete', '--force', SRC]);
    // vm fork took it, not the user: it went with the last VM layered on it (and it was layered on the first).
    const left = await listed();
    assert.deepEqual(left.filter((n) => n.startsWith('e2e-fk-')), []);
    assert.ok(left.includes(SNAP));
    await bangerOk(['snapshot', 'delete', SNAP]);
    assert.equal(existsSync(snap.dir), false, 'the snapshot directory is gone');
    assert.deepEqual(readdirSync(join(E2E_HOME, 'snapshots')).filter((n) => n.includes(snap.id)), []);
    for (const id of ids) {
      assert.deepEqual(pidsMatching(`banger-${id}`), [], `no QEMU of VM ${id}`);
      assert.equal(existsSync(join(E2E_HOME, 'vms', id)), false);
    }
    assert.equal((await banger(['snapshot', 'show', SNAP])).code, 65);
  });
});
