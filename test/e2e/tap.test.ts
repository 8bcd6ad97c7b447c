/**
 * Tap networking on real VMs, entirely inside a network namespace this test creates and deletes: the daemon
 * runs in it (so the bridge, taps and nftables rules exist only there), guests get bridge addresses, banger's
 * DNS answers from the namespace and from a guest, VM-to-VM traffic is blocked, forks of a tap VM each get
 * their own address and MAC and are as isolated, and `banger network down`
 * leaves the namespace's links and ruleset exactly as they were.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { E2E_HOME, REPO_ROOT, banger, bangerOk, e2eSteps } from '../helpers/cli.js';

const NS = `banger-e2e-${randomBytes(3).toString('hex')}`;
const A = 'e2e-tap-a';
const B = 'e2e-tap-b';
const FORK = 'e2e-tapf';
const { step, printConsolesIfFailed } = e2eSteps();
let linksBefore = '';
let rulesBefore = '';

function inNs(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('ip', ['netns', 'exec', NS, cmd, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const links = () => inNs('ip', ['-o', 'link', 'show']).stdout.replace(/\\\s+/g, ' ').split('\n').map((l) => l.replace(/^\d+: /, '')).sort().join('\n');
const ruleset = () => inNs('nft', ['list', 'ruleset']).stdout;

interface Vm {
  name: string;
  network: { mode: string; hostAddress: string };
}
async function show(name: string): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', name, '--json'])).stdout) as Vm;
}

/** The snapshots `vm fork` took of A (named after the fork prefix): they go by themselves with the last VM on them. */
async function forkSnapshots(): Promise<string[]> {
  const list = await banger(['snapshot', 'list', '--json']);
  if (list.code !== 0) return [];
  return (JSON.parse(list.stdout) as { name: string }[]).map((s) => s.name).filter((n) => n.startsWith(`${FORK}-`));
}

/** Resolves NAME with busybox nslookup against `server`; the first address after the "Name:" line. */
function parseNslookup(out: string): string | undefined {
  const after = out.split(/Name:\s+\S+/)[1] ?? '';
  return /Address(?: \d+)?:\s+(\d+\.\d+\.\d+\.\d+)/.exec(after)?.[1];
}

void describe('tap networking in a test-made network namespace', { timeout: 900_000 }, () => {
  before(async () => {
    if (!existsSync('/dev/net/tun')) {
      mkdirSync('/dev/net', { recursive: true });
      spawnSync('mknod', ['/dev/net/tun', 'c', '10', '200']);
    }
    // The shared e2e daemon runs in the host namespace: stop it, and run one inside the test namespace.
    await banger(['daemon', 'stop']);
    assert.equal(spawnSync('ip', ['netns', 'add', NS]).status, 0, 'ip netns add');
    inNs('ip', ['link', 'set', 'lo', 'up']);
    linksBefore = links();
    rulesBefore = ruleset();
    const log = openSync(join(E2E_HOME, 'logs', 'bangerd-netns.log'), 'a');
    const d = spawn('ip', ['netns', 'exec', NS, process.execPath, join(REPO_ROOT, 'dist', 'bangerd.js')], {
      env: { ...process.env, BANGER_HOME: E2E_HOME },
      detached: true,
      stdio: ['ignore', log, log],
    });
    d.unref();
    for (let i = 0; i < 100 && !existsSync(join(E2E_HOME, 'bangerd.sock')); i++) await sleep(100);
    const status = await bangerOk(['daemon', 'status', '--json']);
    assert.ok(JSON.parse(status.stdout).pid > 0);
    await banger(['vm', 'delete', '--force', A, B, `${FORK}-1`, `${FORK}-2`]);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', A, B, `${FORK}-1`, `${FORK}-2`]);
    for (const snap of await forkSnapshots().catch(() => [])) await banger(['snapshot', 'delete', snap]);
    await banger(['network', 'down']);
    await banger(['daemon', 'stop']);
    spawnSync('ip', ['netns', 'del', NS]);
  });


  step('guests boot on the bridge with their own addresses', async () => {
    await bangerOk(['vm', 'run', '--network', 'tap', '--name', A, '--', 'true']);
    await bangerOk(['vm', 'run', '--network', 'tap', '--name', B, '--memory', '512M', '--', 'true']);
    const [a, b] = [await show(A), await show(B)];
    assert.equal(a.network.mode, 'tap');
    assert.match(a.network.hostAddress, /^172\.30\.0\.\d+$/);
    assert.match(b.network.hostAddress, /^172\.30\.0\.\d+$/);
    assert.notEqual(a.network.hostAddress, b.network.hostAddress);
    const ip = await bangerOk(['vm', 'exec', A, '--', 'ip', '-4', '-o', 'addr', 'show', 'eth0']);
    assert.match(ip.stdout, new RegExp(`inet ${a.network.hostAddress.replace(/\./g, '\\.')}/24`));
    const net = JSON.parse((await bangerOk(['network', 'status', '--json'])).stdout) as {
      tap: { bridge: { exists: boolean; up: boolean }; rulesInstalled: boolean; vms: { name: string }[] };
    };
    assert.equal(net.tap.bridge.up, true);
    assert.equal(net.tap.rulesInstalled, true);
    assert.deepEqual(net.tap.vms.map((v) => v.name).sort(), [A, B]);
  });

  step('banger DNS answers NAME.vm from the host side and from a guest', async () => {
    const b = await show(B);
    const host = inNs('busybox', ['nslookup', `${B}.vm`, '172.30.0.1']);
    assert.equal(parseNslookup(host.stdout), b.network.hostAddress, host.stdout + host.stderr);
    const guest = await bangerOk(['vm', 'exec', A, '--', 'busybox', 'nslookup', `${B}.vm`, '172.30.0.1']);
    assert.equal(parseNslookup(guest.stdout), b.network.hostAddress, guest.stdout);
    const unknown = await banger(['vm', 'exec', A, '--', 'busybox', 'nslookup', 'nope.vm', '172.30.0.1']);
    assert.notEqual(unknown.code, 0, 'an unknown name does not resolve');
  });

  step('VM-to-VM traffic is blocked, while the host side reaches both', async () => {
    const [a, b] = [await show(A), await show(B)];
    const probe = (target: string) =>
      `if timeout 5 bash -c 'echo > /dev/tcp/${target}/22' 2>/dev/null; then echo open; else echo closed; fi`;
    assert.equal((await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', probe(b.network.hostAddress)])).stdout, 'closed\n');
    assert.equal((await bangerOk(['vm', 'exec', B, '--', 'sh', '-c', probe(a.network.hostAddress)])).stdout, 'closed\n');
    // The daemon (in the namespace) reaches both guests' SSH: exec works on each.
    assert.equal((await bangerOk(['vm', 'exec', B, '--', 'hostname'])).stdout, `${B}\n`);
    // A guest reaches nothing of the host but DNS: the SSH port of the bridge address is closed to it.
    assert.equal((await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', probe('172.30.0.1')])).stdout, 'closed\n');
  });

  step('forks of a tap VM get their own addresses and MACs, answer from the host side, and stay isolated', async () => {
    const a = await show(A);
    const fork = JSON.parse((await bangerOk(['vm', 'fork', A, '--count', '2', '--name', FORK, '--json'])).stdout) as {
      snapshot: { network: string };
      vms: Vm[];
    };
    assert.equal(fork.snapshot.network, 'tap');
    const [f1, f2] = [await show(`${FORK}-1`), await show(`${FORK}-2`)];
    for (const f of [f1, f2]) assert.equal(f.network.mode, 'tap');
    const addrs = [a.network.hostAddress, f1.network.hostAddress, f2.network.hostAddress];
    assert.equal(new Set(addrs).size, 3, `distinct addresses: ${addrs.join(' ')}`);
    const net = JSON.parse((await bangerOk(['network', 'status', '--json'])).stdout) as { tap: { vms: { name: string; mac: string }[] } };
    const macOf = (n: string) => net.tap.vms.find((v) => v.name === n)?.mac;
    assert.equal(new Set([macOf(A), macOf(f1.name), macOf(f2.name)]).size, 3, 'distinct MACs on the bridge');
    for (const f of [f1, f2]) {
      // The guest moved to the address and MAC its tap passes: nothing of its source's is left on eth0.
      const ip = await bangerOk(['vm', 'exec', f.name, '--', 'sh', '-c', 'ip -4 -o addr show eth0; cat /sys/class/net/eth0/address']);
      assert.match(ip.stdout, new RegExp(`inet ${f.network.hostAddress.replace(/\./g, '\\.')}/24`));
      assert.equal(ip.stdout.includes(`inet ${a.network.hostAddress}/`), false, ip.stdout);
      assert.ok(ip.stdout.trim().endsWith(macOf(f.name)!), ip.stdout);
      // From the namespace (the host side), the fork's SSH port answers at its new address.
      const reach = inNs('bash', ['-c', `timeout 5 bash -c 'echo > /dev/tcp/${f.network.hostAddress}/22' && echo open`]);
      assert.equal(reach.stdout, 'open\n', `${f.name} from the host side: ${reach.stderr}`);
      assert.equal(parseNslookup(inNs('busybox', ['nslookup', `${f.name}.vm`, '172.30.0.1']).stdout), f.network.hostAddress);
    }
    const probe = (target: string) =>
      `if timeout 5 bash -c 'echo > /dev/tcp/${target}/22' 2>/dev/null; then echo open; else echo closed; fi`;
    assert.equal((await bangerOk(['vm', 'exec', f1.name, '--', 'sh', '-c', probe(f2.network.hostAddress)])).stdout, 'closed\n');
    assert.equal((await bangerOk(['vm', 'exec', f2.name, '--', 'sh', '-c', probe(a.network.hostAddress)])).stdout, 'closed\n');
    // The source kept its own place on the bridge through the snapshot.
    const src = await bangerOk(['vm', 'exec', A, '--', 'ip', '-4', '-o', 'addr', 'show', 'eth0']);
    assert.match(src.stdout, new RegExp(`inet ${a.network.hostAddress.replace(/\./g, '\\.')}/24`));
    await bangerOk(['vm', 'delete', '--force', f1.name, f2.name]);
  });

  step('teardown leaves no bridge, tap or rule behind', async () => {
    const refused = await banger(['network', 'down']);
    assert.equal(refused.code, 67, 'network down is refused while tap VMs run');
    await banger(['vm', 'delete', '--force', `${FORK}-1`, `${FORK}-2`]);
    await bangerOk(['vm', 'delete', '--force', A, B]);
    assert.deepEqual(await forkSnapshots(), [], "the fork's snapshot went with the last VM layered on it");
    await bangerOk(['network', 'down']);
    assert.equal(links(), linksBefore);
    assert.equal(ruleset(), rulesBefore);
  });
});
