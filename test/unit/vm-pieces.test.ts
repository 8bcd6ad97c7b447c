import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { buildSeedTar, seedEnv } from '../../src/daemon/services/vm/seed.js';
import { generateVmName, randomMac, validateVmName } from '../../src/daemon/services/vm/names.js';
import { KeyedMutex } from '../../src/daemon/services/locks.js';
import type { BangerError } from '../../src/errors/index.js';
import { shq } from '../../src/daemon/guest/shell.js';
import { Paths, VmPaths, resolveBangerHome } from '../../src/shared/paths.js';
import { launchSpec, type Boot } from '../../src/daemon/services/vm/boot.js';
import { scratchDir } from '../helpers/scratch.js';

const seed = {
  hostname: 'fix-42',
  ipCidr: '10.0.2.15/24',
  gateway: '10.0.2.2',
  dns: '10.0.2.3',
  hostPrivateKey: '-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----',
  hostPublicKey: 'ssh-ed25519 AAAA fix-42.vm',
  authorizedKeys: 'ssh-ed25519 BBBB banger',
};

test('the seed disk is a tar GNU tar reads from a padded block image, with the guest contract files', () => {
  return buildSeedTar(seed).then((tar) => {
    assert.equal(tar.length % 4096, 0);
    const dir = scratchDir('banger-seed-');
    try {
      writeFileSync(join(dir, 'seed.img'), tar);
      const r = spawnSync('tar', ['-xf', join(dir, 'seed.img'), '-C', dir]);
      assert.equal(r.status, 0, r.stderr.toString());
      assert.match(readFileSync(join(dir, 'env'), 'utf8'), /^BANGER_HOSTNAME=fix-42$/m);
      assert.equal(statSync(join(dir, 'ssh_host_ed25519_key')).mode & 0o777, 0o600);
      assert.equal(readFileSync(join(dir, 'authorized_keys'), 'utf8'), 'ssh-ed25519 BBBB banger\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('seed env values are shell-quoted so a sourced file cannot run code', () => {
  const env = seedEnv({ ...seed, hostname: "x'; rm -rf /; '" });
  const r = spawnSync('sh', ['-c', `${env}\nprintf %s "$BANGER_HOSTNAME"`]);
  assert.equal(r.stdout.toString(), "x'; rm -rf /; '");
});

test('VM names must be DNS labels: path tricks and odd characters are refused with an example', () => {
  for (const ok of ['a', 'fix-42', 'x'.repeat(63)]) assert.equal(validateVmName(ok), ok);
  for (const bad of ['', '../etc', 'a/b', 'UPPER', '-lead', 'trail-', 'sp ace', 'x'.repeat(64), 'dot.name', "it's"])
    assert.throws(
      () => validateVmName(bad),
      (e: BangerError) => e.code === 'InvalidArgument' && /invalid VM name/.test(e.message) && /--name fix-42/.test(e.hint ?? ''),
      bad,
    );
  const generated = generateVmName(() => false);
  assert.equal(validateVmName(generated), generated);
  assert.match(randomMac(), /^52:54:00(:[0-9a-f]{2}){3}$/);
});

test('shq quotes anything for sh, including apostrophes and newlines', () => {
  for (const w of ["it's", 'a b', '$(id)', 'x\ny', '', "'"]) {
    const r = spawnSync('sh', ['-c', `printf %s ${shq(w)}`]);
    assert.equal(r.stdout.toString(), w);
  }
});

test('KeyedMutex serialises one key and lets other keys run in parallel', async () => {
  const m = new KeyedMutex();
  const order: string[] = [];
  const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
  await Promise.all([
    m.run('a', async () => {
      order.push('a1-start');
      await wait(30);
      order.push('a1-end');
    }),
    m.run('a', async () => {
      order.push('a2');
    }),
    m.run('b', async () => {
      order.push('b');
    }),
  ]);
  assert.deepEqual(order.indexOf('a2') > order.indexOf('a1-end'), true);
  assert.ok(order.indexOf('b') < order.indexOf('a1-end'));
  assert.equal(m.isLocked('a'), false);
  const ac = new AbortController();
  const holder = m.run('c', () => wait(50));
  const waiter = m.run('c', async () => 'ran', ac.signal);
  ac.abort(new Error('gave up'));
  await assert.rejects(waiter, /gave up/);
  await holder;
});

test('state lives under BANGER_HOME, /var/lib/banger for root, XDG for others', () => {
  assert.equal(resolveBangerHome({ BANGER_HOME: '/x' }, 0), '/x');
  assert.equal(resolveBangerHome({}, 0), '/var/lib/banger');
  assert.equal(resolveBangerHome({ XDG_DATA_HOME: '/d' }, 1000), '/d/banger');
  assert.equal(resolveBangerHome({ HOME: '/h' }, 1000), '/h/.local/share/banger');
  const p = new Paths('/s');
  assert.equal(p.vm('abc').qmpSocket, '/s/vms/abc/qmp.sock');
  assert.ok(new Paths('/tmp/' + 'x'.repeat(40)).vm('0123456789ab').qmpSocket.length < 108);
});

test('launchSpec: a QEMU VM gets the bulk port beside its agent channel, unless it resumes a state saved without one', () => {
  const vp = new VmPaths('/vms/v1');
  const boot = (features: string[], extra: Partial<Boot> = {}) =>
    ({
      vm: { id: 'v1', name: 'a', vcpus: 1, memoryMib: 256, networkMode: 'loopback', hostAddress: '127.77.0.2', sshPort: 22, egress: false, mac: '52:54:00:00:00:01' },
      image: { kernelPath: '/k', initrdPath: '/i' },
      driver: { features: new Set(features), controlSocketPath: () => '/vms/v1/qmp.sock' },
      vp,
      accel: 'tcg',
      ...extra,
    }) as unknown as Boot;
  assert.equal(launchSpec(boot(['virtioSerial']), () => '').bulkSocketPath, vp.bulkSocket);
  assert.equal(launchSpec(boot(['virtioSerial']), () => '').channelSocketPath, vp.agentSocket);
  assert.equal(launchSpec(boot(['virtioSerial'], { bulkPort: false }), () => '').bulkSocketPath, undefined);
  assert.equal(launchSpec(boot(['vsock']), () => '').bulkSocketPath, undefined);
});
