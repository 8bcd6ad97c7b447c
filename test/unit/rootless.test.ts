import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../../src/shared/config.js';
import { USER_DNS_PORT, describeRange, userNetworkDefaults } from '../../src/shared/user-network.js';
import { allocateLoopbackAddress } from '../../src/daemon/services/vm/addresses.js';
import {
  readSubordinateIds,
  rootlessUnpackArgs,
  subordinateRange,
  userNsArgv,
  userNsRunner,
} from '../../src/daemon/services/image/rootless.js';
import { rootlessChecks, type RootlessHost } from '../../src/daemon/services/image/rootless-checks.js';
import { rootDnsCommand, userDnsInstallRefused, userDnsLink } from '../../src/daemon/services/dns/user-install.js';
import { mmdebstrapArgs } from '../../src/daemon/services/image/bootstrap.js';
import type { BangerError } from '../../src/errors/index.js';
import { DnsHostIntegration } from '../../src/daemon/services/dns/host-integration.js';
import { silentLogger } from '../../src/shared/logger.js';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandRunner } from '../../src/shared/command.js';
import { scratchDir } from '../helpers/scratch.js';

test("root keeps its defaults; each normal user gets its own DNS address, a high port and a /24 of VM addresses", () => {
  const root = userNetworkDefaults(0);
  assert.deepEqual([root.dnsAddress, root.dnsPort], ['127.77.0.1', 53]);
  assert.equal(allocateLoopbackAddress(new Set(), root.range), '127.77.0.2');
  const a = userNetworkDefaults(1000);
  const b = userNetworkDefaults(1001);
  assert.equal(a.dnsAddress, '127.131.232.1');
  assert.equal(a.dnsPort, USER_DNS_PORT);
  assert.equal(b.dnsAddress, '127.131.233.1');
  assert.equal(allocateLoopbackAddress(new Set(), a.range), '127.131.232.2');
  assert.equal(describeRange(a.range), '127.131.232.2-254');
  assert.equal(describeRange(root.range), '127.77.0.2 upwards');
  // Every uid below 32768 has a block of its own, never root's.
  const seen = new Set<string>();
  for (let uid = 1; uid < 32768; uid++) {
    const d = userNetworkDefaults(uid);
    assert.ok(!seen.has(d.dnsAddress), `uid ${uid} clashes`);
    assert.notEqual(d.range.second, 77);
    seen.add(d.dnsAddress);
  }
});

test("a user's range is used up at .254 and never spills into another user's", () => {
  const r = userNetworkDefaults(1000).range;
  const used = new Set<string>();
  for (let i = 2; i <= 254; i++) used.add(allocateLoopbackAddress(used, r));
  assert.ok(used.has('127.131.232.254'));
  assert.ok(![...used].some((a) => !a.startsWith('127.131.232.')));
  assert.throws(() => allocateLoopbackAddress(used, r), (e: BangerError) => e.code === 'ResourceExhausted');
});

test("config defaults follow the daemon's uid; keys given in config.json win", () => {
  assert.equal(parseConfig({}).dns.address, '127.77.0.1');
  assert.deepEqual(parseConfig({}, 'c', 1000).dns, { address: '127.131.232.1', port: USER_DNS_PORT });
  assert.deepEqual(parseConfig({ dns: { port: 22053 } }, 'c', 1000).dns, { address: '127.131.232.1', port: 22053 });
  assert.deepEqual(parseConfig({ dns: { address: '127.0.0.1', port: 2 } }, 'c', 1000).dns, { address: '127.0.0.1', port: 2 });
  assert.throws(() => parseConfig({ dns: { bogus: 1 } }, 'c', 1000), /dns/);
});

test('subordinate ranges are read by user name or uid; the first matching line wins', () => {
  const text = 'other:100000:65536\nme:165536:65536\n1002:300000:1000\nme:400000:65536\n';
  assert.deepEqual(subordinateRange(text, { name: 'me', id: 1001 }), { start: 165536, count: 65536 });
  assert.deepEqual(subordinateRange(text, { name: 'x', id: 1002 }), { start: 300000, count: 1000 });
  assert.equal(subordinateRange(text, { name: 'nobody', id: 65534 }), undefined);
  assert.equal(subordinateRange('me:abc:1\n', { name: 'me', id: 1 }), undefined);
});

test('the user namespace maps the user to root and the subordinate ids to 1..N', () => {
  assert.deepEqual(userNsArgv({ start: 100000, count: 65536 }, { start: 200000, count: 65536 }, 'du', ['-s', '/x']), [
    '--map-root-user',
    '--map-users=100000,1,65536',
    '--map-groups=200000,1,65536',
    '--',
    'du',
    '-s',
    '/x',
  ]);
  const a = rootlessUnpackArgs('/s/rootfs.tar', '/s/rootfs.d');
  assert.ok(a.includes('--same-owner') && a.includes('--numeric-owner') && a.includes('--exclude=./dev/*'));
  assert.equal(mmdebstrapArgs({ suite: 'bookworm', mirror: 'http://m', packages: [], targetDir: '/t.tar', unshare: true })[0], '--mode=unshare');
  assert.ok(!mmdebstrapArgs({ suite: 'bookworm', mirror: 'http://m', packages: [], targetDir: '/t' }).includes('--mode=unshare'));
});

test('without subordinate ids a build fails before running anything, naming the root command that fixes it', async () => {
  const calls: string[] = [];
  const run: CommandRunner = async (cmd) => {
    calls.push(cmd);
    return { code: 0, stdout: '', stderr: '' };
  };
  const ns = userNsRunner(run, () => readSubordinateIds(async () => 'someone:1:2\n', { name: 'dev', id: 1000 }));
  await assert.rejects(ns('true', []), (e: BangerError) => {
    assert.equal(e.code, 'FailedPrecondition');
    assert.match(e.hint ?? '', /usermod --add-subuids 100000-165535 --add-subgids 100000-165535 dev/);
    return true;
  });
  assert.deepEqual(calls, []);
});

function host(over: Partial<{ files: Record<string, string>; setuid: boolean; nsCode: number }> = {}): RootlessHost & { nsCalls: number } {
  const files: Record<string, string> = {
    '/proc/sys/user/max_user_namespaces': '1000\n',
    '/etc/subuid': 'dev:100000:65536\n',
    '/etc/subgid': 'dev:100000:65536\n',
    ...over.files,
  };
  const h = {
    nsCalls: 0,
    read: async (p: string) => files[p],
    stat: async () => ({ mode: over.setuid === false ? 0o100755 : 0o104755, uid: 0 }),
    user: { name: 'dev', uid: 1000, gid: 1000 },
    userNs: (async () => {
      h.nsCalls += 1;
      return { code: over.nsCode ?? 0, stdout: '', stderr: 'newuidmap: write to uid_map failed: Operation not permitted\n' };
    }) as CommandRunner,
  };
  return h;
}

test('doctor passes a host ready for rootless builds, after really starting a namespace', async () => {
  const h = host();
  const checks = await rootlessChecks(h);
  assert.deepEqual(checks.map((c) => c.status), ['ok', 'ok', 'ok', 'ok']);
  assert.equal(h.nsCalls, 1);
});

test('doctor names each missing piece of a rootless build with its fix', async () => {
  const byName = async (h: RootlessHost) => Object.fromEntries((await rootlessChecks(h)).map((c) => [c.name.split(': ')[1], c]));
  let c = await byName(host({ files: { '/proc/sys/kernel/unprivileged_userns_clone': '0\n' } }));
  assert.equal(c['user namespaces']!.status, 'fail');
  assert.match(c['user namespaces']!.fix ?? '', /unprivileged_userns_clone=1/);
  assert.equal(c.namespace, undefined); // not tried when a prerequisite is missing
  c = await byName(host({ setuid: false }));
  assert.equal(c.newuidmap!.status, 'fail');
  assert.equal(c.newuidmap!.fix, 'sudo apt-get install uidmap');
  c = await byName(host({ files: { '/etc/subgid': '' } }));
  assert.match(c['subordinate ids']!.detail, /no gid range/);
  assert.match(c['subordinate ids']!.fix ?? '', /usermod --add-subuids/);
  c = await byName(host({ files: { '/etc/subuid': 'dev:100000:1000\n' } }));
  assert.equal(c['subordinate ids']!.status, 'fail');
  c = await byName(host({ nsCode: 1 }));
  assert.equal(c.namespace!.status, 'fail');
  assert.match(c.namespace!.detail, /Operation not permitted/);
});

test("a normal user's dns install is refused with the one root command, which fits Linux's link name limit", () => {
  const e = userDnsInstallRefused({ address: '127.131.232.1', port: 10053, uid: 1000 });
  assert.equal(e.code, 'FailedPrecondition');
  assert.match(e.message, /nothing was changed/);
  assert.ok((e.hint ?? '').includes(rootDnsCommand({ address: '127.131.232.1', port: 10053, uid: 1000 })));
  assert.match(rootDnsCommand({ address: '127.131.232.1', port: 10053, uid: 1000 }), /resolvectl dns bdns-1000 127\.131\.232\.1:10053/);
  assert.ok(userDnsLink(4294967294).length <= 15);
});

test("a normal user's daemon refuses dns install before touching the hosts file, the state file or any command", async () => {
  const dir = scratchDir('banger-rootless-dns-');
  try {
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '127.0.0.1 localhost\n');
    const ran: string[] = [];
    const dns = new DnsHostIntegration({
      stateFile: join(dir, 'dns.json'),
      hostsFile: hosts,
      dnsAddress: '127.131.232.1',
      dnsPort: 10053,
      run: async (cmd) => {
        ran.push(cmd);
        return { code: 0, stdout: '', stderr: '' };
      },
      log: silentLogger(),
      uid: 1000,
    });
    await assert.rejects(dns.install([{ name: 'a', address: '127.131.232.2' }]), (e: BangerError) => {
      assert.equal(e.code, 'FailedPrecondition');
      assert.match(e.hint ?? '', /sudo sh -c .*resolvectl dns bdns-1000 127\.131\.232\.1:10053/);
      return true;
    });
    assert.equal(readFileSync(hosts, 'utf8'), '127.0.0.1 localhost\n');
    assert.equal(existsSync(join(dir, 'dns.json')), false);
    assert.deepEqual(ran, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
