/**
 * banger as normal users (issue 12): two users the test creates (with subordinate ids, not in sudoers),
 * each with a daemon of its own under ~/.local/share/banger, build an image without root (mmdebstrap's
 * unshare mode), run VMs, prepare and export a workspace, and cannot list, reach over SSH or on a guest
 * port, resolve or drive each other's VMs. Needs root (to create the users); the users must be able to read the built CLI.
 * Cost: two image builds at once (one developer set, one --minimal) and two TCG boots, ~8-12 min here.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import dnsPacket from 'dns-packet';
import { CLI } from '../helpers/cli.js';
import {
  bangerAs,
  cannotRunAsTestUser,
  createTestUser,
  removeTestUser,
  runAs,
  userBangerHome,
  type UserResult,
} from '../helpers/test-user.js';
import { userNetworkDefaults } from '../../src/shared/user-network.js';

const USERS = [`bgr-rl-a${process.pid % 1000}`, `bgr-rl-b${process.pid % 1000}`] as const;

function ok(r: UserResult, what: string): UserResult {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r;
}

/** One DNS query for an A record; the answers' addresses ([] for NXDOMAIN or none). */
function queryA(server: string, port: number, name: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const t = setTimeout(() => {
      sock.close();
      reject(new Error(`no DNS answer from ${server}:${port}`));
    }, 5000);
    sock.on('message', (msg) => {
      clearTimeout(t);
      sock.close();
      const p = dnsPacket.decode(msg);
      resolve((p.answers ?? []).flatMap((a) => (a.type === 'A' ? [String(a.data)] : [])));
    });
    sock.send(dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] }), port, server);
  });
}

interface VmJson {
  id: string;
  name: string;
  network: { hostAddress: string; sshPort: number };
}

void describe('banger as two normal users', { skip: cannotRunAsTestUser() ?? false }, () => {
  const [A, B] = USERS;
  const uid: Record<string, number> = {};

  before(() => {
    for (const u of USERS) uid[u] = createTestUser(u);
  });

  after(async () => {
    for (const u of USERS) await removeTestUser(u);
  });

  void it('each builds an image without root, in its own state directory, at the same time', async () => {
    const [a, b] = await Promise.all([
      bangerAs(A, ['image', 'build', 'default']),
      bangerAs(B, ['image', 'build', 'mini', '--minimal']),
    ]);
    ok(a, `${A}: image build`);
    ok(b, `${B}: image build --minimal`);
    assert.match(a.stderr + a.stdout, /unshare mode/);
    const st = spawnSync('stat', ['-c', '%U %a', `/home/${A}/.local/share/banger`, `/home/${A}/.local/share/banger/bangerd.sock`], {
      encoding: 'utf8',
    });
    assert.deepEqual(st.stdout.trim().split('\n'), [`${A} 700`, `${A} 600`]);
    const doc = JSON.parse(ok(await bangerAs(A, ['doctor', '--json']), 'doctor').stdout) as { checks: { name: string; status: string }[] };
    const rootless = doc.checks.filter((c) => c.name.startsWith('rootless builds'));
    assert.deepEqual(
      rootless.map((c) => `${c.name}: ${c.status}`),
      ['user namespaces', 'newuidmap', 'subordinate ids', 'namespace'].map((n) => `rootless builds: ${n}: ok`),
    );
  });

  void it("runs a VM whose files keep their owners, and a workspace from the user's home round-trips", async () => {
    const r = ok(await bangerAs(A, ['vm', 'run', '--name', 'a1', '--', 'uname', '-a']), 'vm run');
    assert.match(r.stdout, /^Linux a1 /m);
    const own = ok(await bangerAs(A, ['vm', 'exec', 'a1', '--', 'stat', '-c', '%U:%G %a', '/usr/bin/passwd', '/var/cache/apt/archives/partial']), 'exec');
    assert.deepEqual(own.stdout.trim().split('\n'), ['root:root 4755', '_apt:root 700']);
    ok(
      await runAs(A, [
        'sh',
        '-c',
        'mkdir -p ~/repo && cd ~/repo && git init -q && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m init && echo hi > f.txt && git add f.txt && git -c user.email=a@b -c user.name=a commit -qm f',
      ]),
      'git repo',
    );
    ok(await bangerAs(A, ['vm', 'workspace', 'prepare', 'a1', `/home/${A}/repo`]), 'workspace prepare');
    ok(await bangerAs(A, ['vm', 'exec', 'a1', '--', 'sh', '-c', 'cd /root/repo && echo more >> f.txt']), 'edit in guest');
    const patch = ok(await bangerAs(A, ['vm', 'workspace', 'export', 'a1']), 'workspace export');
    assert.match(patch.stdout, /^\+more$/m);
  });

  void it("two users' daemons cannot list, drive, reach over SSH or on a guest port, or resolve each other's VMs", async () => {
    ok(await bangerAs(B, ['vm', 'run', '--image', 'mini', '--name', 'b1', '--', 'true']), 'vm run b1');
    const listA = JSON.parse(ok(await bangerAs(A, ['vm', 'list', '--json']), 'list A').stdout) as VmJson[];
    const listB = JSON.parse(ok(await bangerAs(B, ['vm', 'list', '--json']), 'list B').stdout) as VmJson[];
    assert.deepEqual(listA.map((v) => v.name), ['a1']);
    assert.deepEqual(listB.map((v) => v.name), ['b1']);
    const a1 = listA[0]!;
    const b1 = listB[0]!;
    const netA = userNetworkDefaults(uid[A]!);
    const netB = userNetworkDefaults(uid[B]!);
    assert.ok(a1.network.hostAddress.startsWith(netA.dnsAddress.replace(/1$/, '')), a1.network.hostAddress);
    assert.ok(b1.network.hostAddress.startsWith(netB.dnsAddress.replace(/1$/, '')), b1.network.hostAddress);
    assert.notEqual(netA.dnsAddress, netB.dnsAddress);

    // B's banger does not know a1; B cannot use A's daemon socket.
    const exec = await bangerAs(B, ['vm', 'exec', 'a1', '--', 'true']);
    assert.notEqual(exec.code, 0);
    assert.match(exec.stderr, /no VM|not found/i);
    const other = await runAs(B, [process.execPath, CLI, 'ps'], { env: { BANGER_HOME: userBangerHome(A) } });
    assert.equal(other.code, 67, other.stderr);
    // B's key does not open A's VM (B checks the VM's pinned host key, copied from A's state by the test).
    const pinned = `/home/${B}/a1_known_hosts`;
    writeFileSync(pinned, readFileSync(`/home/${A}/.local/share/banger/vms/${a1.id}/known_hosts`));
    spawnSync('chown', [B, pinned]);
    const ssh = await runAs(B, [
      'ssh',
      '-i',
      `/home/${B}/.local/share/banger/ssh/id_ed25519`,
      '-p',
      String(a1.network.sshPort),
      '-o',
      'BatchMode=yes',
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      `UserKnownHostsFile=${pinned}`,
      '-o',
      'HostKeyAlias=a1.vm',
      '-o',
      'ConnectTimeout=20',
      `root@${a1.network.hostAddress}`,
      'true',
    ]);
    assert.equal(ssh.code, 255, ssh.stderr);
    assert.match(ssh.stderr, /Permission denied/);
    // A server in A's guest: A reaches it on the VM's address; B's connection is closed before any byte.
    ok(
      await bangerAs(A, ['vm', 'exec', 'a1', '--', 'sh', '-c', 'mkdir -p /tmp/www && echo from-a1 > /tmp/www/index.html && (setsid busybox httpd -p 8080 -h /tmp/www &)']),
      'guest server',
    );
    const get = (user: string) =>
      runAs(user, [
        process.execPath,
        '-e',
        `require('http').get('http://${a1.network.hostAddress}:8080/',r=>{let b='';r.on('data',d=>b+=d);r.on('end',()=>console.log('body',b.trim()))}).on('error',e=>console.log('error',e.code))`,
      ]);
    let fromA = '';
    for (let i = 0; i < 60 && !fromA.startsWith('body'); i++) {
      if (i > 0) await sleep(1000);
      fromA = (await get(A)).stdout.trim();
    }
    assert.equal(fromA, 'body from-a1', "the owner reaches the guest's server once its port is forwarded");
    assert.match((await get(B)).stdout.trim(), /^error (ECONNRESET|EPIPE)$/, "another user's connection is closed at once");
    assert.match(
      readFileSync(`/home/${A}/.local/share/banger/logs/bangerd.log`, 'utf8'),
      new RegExp(`refused a connection to a guest port.*"uid":${uid[B]}|"uid":${uid[B]}.*refused a connection to a guest port`),
    );
    // Each daemon's DNS server answers for its own VMs only.
    assert.deepEqual(await queryA(netA.dnsAddress, netA.dnsPort, 'a1.vm'), [a1.network.hostAddress]);
    assert.deepEqual(await queryA(netB.dnsAddress, netB.dnsPort, 'a1.vm'), []);
    assert.deepEqual(await queryA(netB.dnsAddress, netB.dnsPort, 'b1.vm'), [b1.network.hostAddress]);
    // ...and to its owner (and root), not to another user who asks it directly.
    const askAs = async (user: string, server: { dnsAddress: string; dnsPort: number }, name: string) => {
      const query = dnsPacket.encode({ type: 'query', id: 9, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
      const script = `const s=require('dgram').createSocket('udp4');s.on('message',m=>{console.log(m.toString('base64'));s.close()});s.send(Buffer.from('${query.toString('base64')}','base64'),${server.dnsPort},'${server.dnsAddress}')`;
      const r = ok(await runAs(user, [process.execPath, '-e', script], { timeoutMs: 10_000 }), `DNS query as ${user}`);
      const reply = dnsPacket.decode(Buffer.from(r.stdout.trim(), 'base64'));
      return (reply.answers ?? []).flatMap((a) => (a.type === 'A' ? [String(a.data)] : []));
    };
    assert.deepEqual(await askAs(A, netA, 'a1.vm'), [a1.network.hostAddress]);
    assert.deepEqual(await askAs(B, netA, 'a1.vm'), []);
  });

  void it('what needs root says so before doing anything', async () => {
    const dns = await bangerAs(A, ['dns', 'install']);
    assert.notEqual(dns.code, 0);
    assert.match(dns.stderr, /nothing was changed/);
    assert.match(dns.stderr, /sudo sh -c '.*resolvectl dns bdns-\d+ /);
    const tap = await bangerAs(A, ['vm', 'create', '--network', 'tap', '--name', 'tapvm']);
    assert.notEqual(tap.code, 0);
    assert.match(tap.stderr, /needs a daemon running as root/);
    const list = JSON.parse(ok(await bangerAs(A, ['vm', 'list', '--json']), 'list').stdout) as VmJson[];
    assert.deepEqual(list.map((v) => v.name), ['a1']);
  });
});
