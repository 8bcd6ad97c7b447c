/**
 * TapNetwork against the real kernel, confined to a network namespace this test creates and deletes:
 * the injected runner prefixes every command with `ip netns exec <ns>`, so no bridge, tap or nft rule
 * ever touches the host's own namespace. Skipped, with the reason printed, when not root or when
 * iproute2/nftables/netns are unavailable.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { TapNetwork } from '../../src/daemon/services/network/tap.js';
import type { TapState } from '../../src/daemon/services/network/tap-state.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (creates a network namespace)';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 or nftables is not installed';
  }
  return false;
}

const skip = skipReason();
if (skip) process.stderr.write(`skipping tap netns tests: ${skip}\n`);

interface Link {
  ifname: string;
  master?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_slave_data?: { isolated?: boolean } };
}

void describe('TapNetwork inside a test network namespace', { skip, timeout: 120_000 }, () => {
  const ns = `banger-t-${randomBytes(4).toString('hex')}`;
  const inNs: CommandRunner = (cmd, args, opts) => runCommand('ip', ['netns', 'exec', ns, cmd, ...args], opts);
  const sh = async (cmd: string, ...args: string[]) => (await inNs(cmd, args)).stdout;
  const links = async (): Promise<Link[]> => JSON.parse(await sh('ip', '-j', '-d', 'link', 'show')) as Link[];
  const link = async (name: string) => (await links()).find((l) => l.ifname === name);
  let dir: string;
  let statePath: string;
  let net: TapNetwork;
  let baseLinks: string;
  let baseRules: string;

  before(async () => {
    await runCommand('ip', ['netns', 'add', ns]);
    await inNs('ip', ['link', 'set', 'lo', 'up']);
    dir = scratchDir('banger-tap-it-');
    statePath = join(dir, 'network', 'tap.json');
    net = new TapNetwork({
      run: inNs,
      statePath,
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log: silentLogger(),
    });
    baseLinks = await sh('ip', '-o', 'link');
    baseRules = await sh('nft', 'list', 'ruleset');
  });

  after(async () => {
    // Deleting the namespace removes everything made inside it, whatever state the test left.
    await runCommand('ip', ['netns', 'del', ns], { allowFailure: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('TapNetwork.supported sees a usable host', async () => {
    assert.deepEqual(await TapNetwork.supported(inNs), { ok: true });
  });

  test('up creates the bridge with the gateway address and both banger tables; twice is harmless', async () => {
    await net.up();
    await net.up();
    const br = await link('banger0');
    assert.equal(br?.linkinfo?.info_kind, 'bridge');
    assert.ok(br?.flags?.includes('UP'));
    assert.match(await sh('ip', '-4', '-o', 'addr', 'show', 'dev', 'banger0'), /inet 172\.30\.0\.1\/24 /);
    const tables = await sh('nft', 'list', 'tables');
    assert.match(tables, /^table inet banger$/m);
    assert.match(tables, /^table bridge banger$/m);
  });

  test('two attaches give distinct addresses and isolated taps on the bridge; the rules list them', async () => {
    const a = await net.attach('aaaa00000001', { egress: false });
    const b = await net.attach('bbbb00000002', { egress: false });
    assert.equal(a.guestCidr, '172.30.0.2/24');
    assert.equal(b.guestCidr, '172.30.0.3/24');
    assert.notEqual(a.tapName, b.tapName);
    assert.equal(a.gateway, '172.30.0.1');
    assert.equal(a.dns, '172.30.0.1');
    for (const t of [a.tapName, b.tapName]) {
      const l = await link(t);
      assert.equal(l?.linkinfo?.info_kind, 'tun', t);
      assert.equal(l?.master, 'banger0', t);
      assert.equal(l?.linkinfo?.info_slave_data?.isolated, true, t);
      assert.ok(l?.flags?.includes('UP'), t);
    }
    // Again for the same VM: same tap and address.
    assert.deepEqual(await net.attach('aaaa00000001', { egress: false }), a);

    const rules = await sh('nft', 'list', 'ruleset');
    assert.match(rules, /elements = \{ "bgr-aaaa0000000" \. 172\.30\.0\.2,\s+"bgr-bbbb0000000" \. 172\.30\.0\.3 \}/);
    assert.match(rules, /iifname "bgr-\*" drop/);
    assert.match(rules, /ip daddr 172\.30\.0\.1 udp dport 53 accept/);
    assert.match(rules, /iifname "banger0" drop/);
    assert.doesNotMatch(rules, /masquerade/, 'no egress in tests');
    assert.equal((await sh('sysctl', '-n', 'net.ipv4.ip_forward')).trim(), '0');

    const status = await net.status();
    assert.deepEqual(
      status.vms.map((v) => [v.vmId, v.tapExists, v.enslaved, v.isolated]),
      [
        ['aaaa00000001', true, true, true],
        ['bbbb00000002', true, true, true],
      ],
    );
    assert.deepEqual(status.tables, { inet: true, bridge: true });
    assert.equal(status.bridge.exists && status.bridge.up, true);
  });

  test('detach removes the tap and its set entries and frees the address', async () => {
    await net.detach('bbbb00000002');
    assert.equal(await link('bgr-bbbb0000000'), undefined);
    assert.doesNotMatch(await sh('nft', 'list', 'ruleset'), /172\.30\.0\.3/);
    const c = await net.attach('cccc00000003', { egress: false });
    assert.equal(c.guestCidr, '172.30.0.3/24');
  });

  test('reconcile recreates a live VM tap that vanished and removes dead and unrecorded ones', async () => {
    // After a "crash": a's tap disappeared, c is no longer running, and someone left a stray tap.
    await inNs('ip', ['link', 'del', 'dev', 'bgr-aaaa0000000']);
    await inNs('ip', ['tuntap', 'add', 'dev', 'bgr-stray', 'mode', 'tap']);
    await inNs('ip', ['link', 'set', 'dev', 'bgr-stray', 'master', 'banger0']);
    await net.reconcile(new Set(['aaaa00000001']));
    const taps = (await links()).filter((l) => l.ifname.startsWith('bgr-')).map((l) => l.ifname);
    assert.deepEqual(taps, ['bgr-aaaa0000000']);
    assert.equal((await link('bgr-aaaa0000000'))?.linkinfo?.info_slave_data?.isolated, true);
    const st = JSON.parse(await readFile(statePath, 'utf8')) as TapState;
    assert.deepEqual(Object.keys(st.vms), ['aaaa00000001']);

    // Nothing live any more: every tap goes, the (empty) network stays up until `down`.
    await net.reconcile(new Set());
    assert.deepEqual(
      (await links()).filter((l) => l.ifname.startsWith('bgr-')),
      [],
    );
    assert.equal((await link('banger0'))?.linkinfo?.info_kind, 'bridge');
  });

  test('down leaves the namespace exactly as it was: no bridge, tap or banger table', async () => {
    await net.attach('dddd00000004', { egress: false });
    await net.down();
    assert.equal(await sh('ip', '-o', 'link'), baseLinks);
    assert.equal(await sh('nft', 'list', 'ruleset'), baseRules);
    await net.down();
    assert.equal(await sh('ip', '-o', 'link'), baseLinks);
    const status = await net.status();
    assert.equal(status.bridge.exists, false);
    assert.deepEqual(status.tables, { inet: false, bridge: false });
  });
});
