/**
 * The spine on real QEMU VMs: build (cached) image, vm run with exit codes and separate streams,
 * persistence across stop/start, daemon kill -9 and re-adoption, two VMs at once, delete cleans up.
 * VMs are shared between steps where that keeps the steps independent of each other's results.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { E2E_HOME, banger, bangerChild, bangerOk, pidsMatching, e2eSteps, type CliResult } from '../helpers/cli.js';

interface Vm {
  id: string;
  name: string;
  state: string;
  pid: number | null;
  dir: string;
  accel: string | null;
  network: { hostAddress: string; sshPort: number };
}

const A = 'e2e-spine-a';
const B = 'e2e-spine-b';
const C = 'e2e-spine-rm';
const { step, printConsolesIfFailed } = e2eSteps();

async function show(name: string): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', name, '--json'])).stdout) as Vm;
}

function daemonPid(): number {
  return Number(readFileSync(join(E2E_HOME, 'bangerd.pid'), 'utf8').trim());
}

void describe('spine: real VMs under QEMU', { timeout: 1_500_000 }, () => {
  before(async () => {
    // Leftovers of an interrupted earlier run.
    await banger(['vm', 'delete', '--force', A, B, C]);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', A, B, C]);
  });

  step('the default image exists or is built, with files, sizes and checksums recorded', async () => {
    const r = await bangerOk(['image', 'build', 'default', '--json'], 0, { timeoutMs: 900_000 });
    const img = JSON.parse(r.stdout) as {
      status: string;
      files: { role: string; sizeBytes: number; sha256: string; path: string }[];
    };
    assert.equal(img.status, 'ready');
    assert.deepEqual(img.files.map((f) => f.role).sort(), ['initrd', 'kernel', 'rootfs']);
    for (const f of img.files) {
      assert.match(f.sha256, /^[0-9a-f]{64}$/);
      assert.equal(statSync(f.path).size, f.sizeBytes);
    }
  });

  step('vm run streams stdout and stderr separately and exits with the command exit code', async () => {
    const r = await banger(['vm', 'run', '--name', A, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'out\n');
    assert.match(r.stderr, /^err$/m);
    assert.doesNotMatch(r.stdout, /err/);
    const vm = await show(A);
    assert.equal(vm.state, 'running');
    assert.ok(vm.pid && pidsMatching(vm.id).includes(vm.pid), 'the VMM process runs');
    // A falls back to TCG here with a notice; a KVM host says nothing.
    if (vm.accel === 'tcg') assert.match(r.stderr, /software emulation \(TCG\)/);
  });

  step('vm exec passes stdin through, keeps arguments intact and returns the exit code', async () => {
    const r = await banger(['vm', 'exec', A, '--', 'sh', '-c', 'cat; echo "$1"; exit 3', 'sh', "it's a b"], {
      input: 'from-stdin\n',
    });
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, "from-stdin\nit's a b\n");
    const mise = await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', 'echo $MISE_OFFLINE; mise --version']);
    assert.match(mise.stdout, /^1\n\d{4}\.\d+\.\d+/);
     // A TCG guest maps processes at fixed addresses (config qemu.tcgGuestAslr, off by default); KVM keeps ASLR.
    const aslr = await bangerOk(['vm', 'exec', A, '--', 'cat', '/proc/sys/kernel/randomize_va_space']);
    assert.equal(aslr.stdout, (await show(A)).accel === 'tcg' ? '0\n' : '2\n');
  });

  step('a file written in the guest survives stop and start', async () => {
    await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', 'echo persisted > /root/keep.txt && sync']);
    const stopped = JSON.parse((await bangerOk(['vm', 'stop', A, '--json'])).stdout) as Vm[];
    assert.equal(stopped[0]?.state, 'stopped');
    assert.deepEqual(pidsMatching((await show(A)).id), [], 'no VMM process after stop');
    await bangerOk(['vm', 'start', A]);
    const r = await bangerOk(['vm', 'exec', A, '--', 'cat', '/root/keep.txt']);
    assert.equal(r.stdout, 'persisted\n');
  });

  step(
    'Ctrl-C while a start waits for the guest: exit 130, the VM stopped with no VMM process, and it starts again',
    async () => {
      await bangerOk(['vm', 'stop', A]);
      const { id } = await show(A);
      const { child, result } = bangerChild(['vm', 'start', A]);
      // Interrupt once the VMM runs: the boot is then waiting on the guest, the case a user hits most.
      for (let i = 0; i < 600 && pidsMatching(id).length === 0; i++) await sleep(100);
      assert.notDeepEqual(pidsMatching(id), [], 'the VMM process appeared');
      await sleep(1000);
      child.kill('SIGINT');
      const r = await result;
      assert.equal(r.code, 130, r.stderr);
      const vm = (await show(A)) as Vm & { lastError: string | null };
      assert.equal(vm.state, 'stopped');
      assert.match(vm.lastError ?? '', /cancelled/);
      assert.deepEqual(pidsMatching(id), [], 'no VMM process left');
      await bangerOk(['vm', 'start', A]);
      assert.equal((await bangerOk(['vm', 'exec', A, '--', 'cat', '/root/keep.txt'])).stdout, 'persisted\n');
    },
  );

  step("vm run --rm is the daemon's to clean up: a CLI killed mid-command still leaves no VM behind", async () => {
    const { child, result } = bangerChild(['vm', 'run', '--rm', '--name', C, '--', 'sleep', '600']);
    let exited: CliResult | null = null;
    void result.then((r) => (exited = r));
    let id = '';
    while (!id && !exited) {
      const r = await banger(['vm', 'show', C, '--json']);
      if (r.code === 0 && (JSON.parse(r.stdout) as Vm).state === 'running') id = (JSON.parse(r.stdout) as Vm).id;
      else await sleep(200);
    }
    assert.ok(id, `the --rm VM came up (vm run ended first: ${JSON.stringify(exited)})`);
    child.kill('SIGKILL');
    await result;
    let gone = false;
    for (let i = 0; i < 600 && !gone; i++) {
      gone = (await banger(['vm', 'show', C])).code === 65;
      if (!gone) await sleep(100);
    }
    assert.ok(gone, 'the VM was deleted once its client was gone');
    assert.deepEqual(pidsMatching(id), [], 'no VMM process left');
    assert.equal(existsSync(join(E2E_HOME, 'vms', id)), false, 'no VM directory left');
  });

  step('a guest that prints nothing is started again once, with a notice, and then boots', async () => {
    // boot.silentSeconds this short makes every boot look stalled before the kernel's first line: the
    // relaunch path (VMM ended, seed written again, VMM started) then runs on a real VM.
    const configPath = join(E2E_HOME, 'config.json');
    const configBefore = existsSync(configPath) ? readFileSync(configPath, 'utf8') : undefined;
    const config = configBefore ? (JSON.parse(configBefore) as Record<string, unknown>) : {};
    try {
      const boot = (config.boot ?? {}) as Record<string, unknown>;
      writeFileSync(configPath, JSON.stringify({ ...config, boot: { ...boot, silentSeconds: 0.001 } }));
      await bangerOk(['daemon', 'stop']);
      const r = await bangerOk(['vm', 'run', '--rm', '--name', C, '--cpus', '1', '--memory', '512M', '--', 'hostname']);
      assert.match(r.stderr, /note: the guest printed nothing for 0 s \(an early-boot stall\); starting its VMM again, once/);
      assert.equal(r.stdout, `${C}\n`);
      assert.equal((await banger(['vm', 'show', C])).code, 65, 'the --rm VM is gone');
    } finally {
      if (configBefore === undefined) rmSync(configPath, { force: true });
      else writeFileSync(configPath, configBefore);
      await banger(['daemon', 'stop']);
    }
    assert.equal((await show(A)).state, 'running', 'A kept running across the daemon restarts');
  });

  step('kill -9 of bangerd loses nothing: the next command re-adopts the running VM', async () => {
    const before = await show(A);
    const pid = daemonPid();
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await sleep(100);
    const ps = await bangerOk(['ps', '--json']);
    const vm = (JSON.parse(ps.stdout) as Vm[]).find((v) => v.name === A);
    assert.equal(vm?.state, 'running');
    assert.equal(vm?.pid, before.pid, 'the same VMM process, adopted');
    assert.notEqual(daemonPid(), pid, 'a new daemon answers');
    const r = await bangerOk(['vm', 'exec', A, '--', 'cat', '/root/keep.txt']);
    assert.equal(r.stdout, 'persisted\n');
  });

  step('two VMs run at once, each with its own address and disk', async () => {
    await bangerOk(['vm', 'create', '--name', B, '--memory', '512M', '--cpus', '1']);
    await bangerOk(['vm', 'start', B]);
    const [a, b] = await Promise.all([
      bangerOk(['vm', 'exec', A, '--', 'sh', '-c', 'hostname; ls /root/keep.txt']),
      bangerOk(['vm', 'exec', B, '--', 'sh', '-c', 'hostname; ls /root/keep.txt 2>/dev/null || echo absent']),
    ]);
    assert.equal(a.stdout, `${A}\n/root/keep.txt\n`);
    assert.equal(b.stdout, `${B}\nabsent\n`);
    const list = JSON.parse((await bangerOk(['vm', 'list', '--json'])).stdout) as Vm[];
    const running = list.filter((v) => v.name === A || v.name === B);
    assert.equal(running.filter((v) => v.state === 'running').length, 2);
    const where = (v: Vm) => `${v.network.hostAddress}:${v.network.sshPort}`;
    assert.notEqual(where(running[0]!), where(running[1]!));
  });

  step('delete removes every process and file of the VM', async () => {
    const vms = [await show(A), await show(B)];
    const refused = await banger(['vm', 'delete', A]);
    assert.equal(refused.code, 67, 'a running VM is not deleted without --force');
    assert.match(refused.stderr, /--force/);
    // A name that is not there is reported, and the VMs after it are still deleted (a retried delete finishes).
    const partly = await banger(['vm', 'delete', '--force', A, 'e2e-spine-nope', B]);
    assert.equal(partly.code, 65, partly.stderr);
    assert.match(partly.stderr, /deleted e2e-spine-a[\s\S]*no VM named 'e2e-spine-nope'[\s\S]*deleted e2e-spine-b/);
    for (const vm of vms) {
      assert.deepEqual(pidsMatching(vm.id), [], `no process of ${vm.name} remains`);
      assert.equal(existsSync(vm.dir), false, `${vm.dir} is gone`);
    }
    const missing = await banger(['vm', 'show', A]);
    assert.equal(missing.code, 65);
    assert.match(missing.stderr, /no VM named 'e2e-spine-a'/);
    assert.match(missing.stderr, /banger vm list/);
  });

  step('bad input gets a clear error and a distinct exit code', async () => {
    const bad = await banger(['vm', 'create', '--name', '../etc']);
    assert.equal(bad.code, 64);
    assert.match(bad.stderr, /invalid VM name/);
    const noImage = await banger(['vm', 'create', '--name', 'e2e-noimg', '--image', 'nope']);
    assert.equal(noImage.code, 65);
    assert.match(noImage.stderr, /banger image build nope/);
    const inUse = await bangerOk(['vm', 'create', '--name', 'e2e-hold']);
    try {
      const del = await banger(['image', 'delete', 'default']);
      assert.equal(del.code, 67);
      assert.match(del.stderr, /used by VM e2e-hold/);
    } finally {
      await banger(['vm', 'delete', '--force', 'e2e-hold']);
    }
    assert.ok(inUse.stdout.includes('e2e-hold'));
  });

  step('doctor reports on the host as JSON, with a fix for every problem', async () => {
    const r = await banger(['doctor', '--json']);
    const report = JSON.parse(r.stdout) as { ok: boolean; checks: { name: string; status: string; fix?: string }[] };
    assert.equal(r.code, report.ok ? 0 : 67);
    const names = report.checks.map((c) => c.name);
    for (const n of ['qemu', 'mmdebstrap', 'kvm', 'firecracker', 'disk space', 'daemon socket'])
      assert.ok(names.includes(n), n);
    for (const c of report.checks) if (c.status !== 'ok') assert.ok(c.fix, `${c.name} has a fix`);
    const sock = report.checks.find((c) => c.name === 'daemon socket');
    assert.equal(sock?.status, 'ok');
    assert.equal(statSync(join(E2E_HOME, 'bangerd.sock')).mode & 0o077, 0, 'socket closed to others');
  });
});
