/**
 * Loopback networking on real VMs: per-VM addresses, `ssh NAME.vm` through the installed ssh include with the
 * system OpenSSH, guest ports forwarded at runtime, `.vm` names through `banger dns install`, and isolation.
 * Only loopback addresses are ever contacted; guests run with restrict=on.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { banger, bangerOk, e2eSteps } from '../helpers/cli.js';

interface Vm {
  name: string;
  state: string;
  network: { hostAddress: string; sshPort: number; forwardedPorts: number[]; egress: boolean; portWatch: string | null };
}

const A = 'e2e-net-a';
const B = 'e2e-net-b';
const SSH_CONFIG = join(homedir(), '.ssh', 'config');
const { step, printConsolesIfFailed } = e2eSteps();
let sshConfigBefore: Buffer | null = null;
let hostsBefore: Buffer;

async function show(name: string): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', name, '--json'])).stdout) as Vm;
}

/** GETs a URL on a loopback address with a short timeout; the body, or null if nothing answers. */
async function httpGet(url: string): Promise<string | null> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
    return await r.text();
  } catch {
    return null;
  }
}

async function waitFor<T>(what: string, fn: () => Promise<T | null>, ok: (v: T | null) => boolean, ms = 20_000) {
  const end = Date.now() + ms;
  let v: T | null = null;
  while (Date.now() < end) {
    v = await fn();
    if (ok(v)) return v;
    await sleep(500);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(v)})`);
}

const startServer = (vm: string, body: string) =>
  bangerOk([
    'vm', 'exec', vm, '--', 'sh', '-c',
    `mkdir -p /tmp/www && echo ${body} > /tmp/www/index.html && (setsid busybox httpd -p 8080 -h /tmp/www &)`,
  ]);

void describe('loopback networking on real VMs', { timeout: 900_000 }, () => {
  before(async () => {
    await banger(['vm', 'delete', '--force', A, B]);
    sshConfigBefore = existsSync(SSH_CONFIG) ? readFileSync(SSH_CONFIG) : null;
    hostsBefore = readFileSync('/etc/hosts');
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['ssh-config', 'uninstall']);
    await banger(['dns', 'uninstall']);
    await banger(['vm', 'delete', '--force', A, B]);
  });


  step('two VMs get different loopback addresses, SSH on each address', async () => {
    await bangerOk(['vm', 'run', '--name', A, '--', 'true']);
    await bangerOk(['vm', 'run', '--name', B, '--memory', '512M', '--', 'true']);
    const [a, b] = [await show(A), await show(B)];
    assert.match(a.network.hostAddress, /^127\.77\.\d+\.\d+$/);
    assert.match(b.network.hostAddress, /^127\.77\.\d+\.\d+$/);
    assert.notEqual(a.network.hostAddress, b.network.hostAddress);
    assert.equal(a.network.egress, false);
  });

  step('ssh NAME.vm works with the system OpenSSH once the include is installed, and uninstall restores the file', async () => {
    await bangerOk(['ssh-config', 'install']);
    const r = spawnSync('ssh', ['-o', 'BatchMode=yes', `${A}.vm`, 'hostname'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `${A}\n`);
    await bangerOk(['ssh-config', 'uninstall']);
    if (sshConfigBefore === null) assert.equal(existsSync(SSH_CONFIG), false);
    else assert.deepEqual(readFileSync(SSH_CONFIG), sshConfigBefore);
  });

  step('a server started in the guest is reachable on NAME.vm:8080, and goes away when stopped', async () => {
    await bangerOk(['dns', 'install']);
    const getent = spawnSync('getent', ['hosts', `${A}.vm`], { encoding: 'utf8' });
    const a = await show(A);
    assert.equal(getent.stdout.trim().split(/\s+/)[0], a.network.hostAddress, getent.stderr);
    await startServer(A, 'hello-from-a');
    const body = await waitFor('the forward of port 8080', () => httpGet(`http://${A}.vm:8080/`), (v) => v === 'hello-from-a\n');
    assert.equal(body, 'hello-from-a\n');
    assert.deepEqual((await show(A)).network.forwardedPorts, [8080]);
    await waitFor('the guest agent to push the port list', async () => (await show(A)).network.portWatch, (v) => v === 'agent', 60_000);
    const ports = JSON.parse((await bangerOk(['vm', 'ports', A, '--json'])).stdout) as {
      ports: { port: number; process: string | null; url: string | null }[];
    };
    const p8080 = ports.ports.find((p) => p.port === 8080);
    assert.equal(p8080?.process, 'busybox');
    assert.equal(p8080?.url, `http://${A}.vm:8080/`);
    await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', 'kill $(pidof busybox) 2>/dev/null; true']);
    await waitFor('the forward to go away', async () => (await show(A)).network.forwardedPorts, (v) => v?.length === 0);
    assert.equal(await httpGet(`http://${A}.vm:8080/`), null);
    await bangerOk(['dns', 'uninstall']);
    assert.deepEqual(readFileSync('/etc/hosts'), hostsBefore, '/etc/hosts is restored byte for byte');
  });

  step('VM A cannot reach VM B (or the host) from inside, while the host reaches B', async () => {
    await startServer(B, 'hello-from-b');
    const b = await show(B);
    const fromHost = await waitFor('B:8080 from the host', () => httpGet(`http://${b.network.hostAddress}:8080/`), (v) => v === 'hello-from-b\n');
    assert.equal(fromHost, 'hello-from-b\n');
    // From A, the host (and through it every VM forward) sits behind the user-network gateway 10.0.2.2;
    // with restrict=on nothing gets through. Try the gateway and B's address on its forwarded ports.
    const probe = [
      `10.0.2.2/8080`, `10.0.2.2/22`, `${b.network.hostAddress}/8080`,
    ].map((t) => `if timeout 5 bash -c 'echo > /dev/tcp/${t}' 2>/dev/null; then echo open ${t}; else echo closed ${t}; fi`);
    const r = await bangerOk(['vm', 'exec', A, '--', 'sh', '-c', probe.join('; ')]);
    assert.equal(r.stdout, ['10.0.2.2/8080', '10.0.2.2/22', `${b.network.hostAddress}/8080`].map((t) => `closed ${t}\n`).join(''));
  });
});
