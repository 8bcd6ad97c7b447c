import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/errors/index.js';
import type { CommandRunner, RunOptions } from '../../src/shared/command.js';
import { TapNetwork } from '../../src/daemon/services/network/tap.js';
import {
  allocateAddress,
  gatewayAddress,
  isGuestAddress,
  macForAddress,
  parseSubnet,
  tapNameFor,
  validateTapConfig,
} from '../../src/daemon/services/network/tap-addresses.js';
import { buildRuleset, removeTablesScript } from '../../src/daemon/services/network/nft-rules.js';
import { ipArgv } from '../../src/daemon/services/network/ip-link.js';
import type { TapState } from '../../src/daemon/services/network/tap-state.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

void test('parseSubnet accepts a network address and rejects host bits, bad prefixes and junk', () => {
  assert.deepEqual(parseSubnet('172.30.0.0/24'), { network: 0xac1e0000, prefix: 24 });
  assert.deepEqual(parseSubnet('10.0.0.0/8'), { network: 0x0a000000, prefix: 8 });
  for (const bad of ['172.30.0.1/24', '172.30.0.0/31', '172.30.0.0/7', '172.30.0.0', '300.1.1.0/24', 'x/24']) {
    assert.throws(
      () => parseSubnet(bad),
      (e: unknown) => e instanceof BangerError && e.code === 'InvalidArgument' && e.message.includes(bad),
      bad,
    );
  }
});

void test('validateTapConfig: bridge names are interface names and never look like taps', () => {
  assert.deepEqual(validateTapConfig({ bridge: 'banger0', subnet: '172.30.0.0/24' }).prefix, 24);
  assert.throws(
    () => validateTapConfig({ bridge: 'a-very-long-bridge', subnet: '172.30.0.0/24' }),
    /invalid bridge name/,
  );
  assert.throws(() => validateTapConfig({ bridge: 'br;rm', subnet: '172.30.0.0/24' }), /invalid bridge name/);
  assert.throws(() => validateTapConfig({ bridge: 'bgr-0', subnet: '172.30.0.0/24' }), /are taps/);
});

void test('addresses: gateway is .1, guests start at .2, skip used ones, never the broadcast', () => {
  const s = parseSubnet('172.30.0.0/24');
  assert.equal(gatewayAddress(s), '172.30.0.1');
  assert.equal(allocateAddress(s, new Set()), '172.30.0.2');
  assert.equal(allocateAddress(s, new Set(['172.30.0.2', '172.30.0.3'])), '172.30.0.4');
  assert.equal(allocateAddress(s, new Set(['172.30.0.3'])), '172.30.0.2');
  const all = new Set<string>();
  for (let i = 2; i <= 253; i++) all.add(`172.30.0.${i}`);
  assert.equal(allocateAddress(s, all), '172.30.0.254');
  all.add('172.30.0.254');
  assert.throws(
    () => allocateAddress(s, all),
    (e: unknown) => e instanceof BangerError && e.code === 'ResourceExhausted',
  );
  // A /30 has exactly one guest address.
  const tiny = parseSubnet('10.9.9.4/30');
  assert.equal(gatewayAddress(tiny), '10.9.9.5');
  assert.equal(allocateAddress(tiny, new Set()), '10.9.9.6');
  assert.throws(() => allocateAddress(tiny, new Set(['10.9.9.6'])), /no free address/);
  // Crossing an octet boundary.
  const wide = parseSubnet('10.1.0.0/16');
  const used = new Set<string>();
  for (let i = 2; i <= 255; i++) used.add(`10.1.0.${i}`);
  assert.equal(allocateAddress(wide, used), '10.1.1.0');
  assert.equal(isGuestAddress(s, '172.30.0.1'), false);
  assert.equal(isGuestAddress(s, '172.30.0.255'), false);
  assert.equal(isGuestAddress(s, '172.30.1.2'), false);
  assert.equal(isGuestAddress(s, '172.30.0.2'), true);
});

void test('tap names: bgr- plus the id, at most 15 characters, unique against taken names', () => {
  assert.equal(tapNameFor('a1b2c3d4e5f6', new Set()), 'bgr-a1b2c3d4e5f');
  assert.equal(tapNameFor('AB_cd', new Set()), 'bgr-abcd');
  const other = tapNameFor('a1b2c3d4e5f6', new Set(['bgr-a1b2c3d4e5f']));
  assert.notEqual(other, 'bgr-a1b2c3d4e5f');
  assert.match(other, /^bgr-[0-9a-f]{11}$/);
  // Deterministic: the same inputs give the same name.
  assert.equal(tapNameFor('a1b2c3d4e5f6', new Set(['bgr-a1b2c3d4e5f'])), other);
  for (const id of ['x', 'a1b2c3d4e5f6a1b2c3d4e5f6', '---', 'Ünïcode-id']) {
    const n = tapNameFor(id, new Set());
    assert.ok(n.length <= 15 && /^bgr-[a-z0-9]+$/.test(n), n);
  }
});

void test('macForAddress: 52:54 and the address bytes', () => {
  assert.equal(macForAddress('172.30.0.2'), '52:54:ac:1e:00:02');
  assert.equal(macForAddress('10.1.255.16'), '52:54:0a:01:ff:10');
});

const table = (egressB: boolean) => ({
  bridge: 'banger0',
  gateway: '172.30.0.1',
  vms: [
    // Given out of order: the text is sorted by VM id.
    { vmId: 'bbbb', tapName: 'bgr-bbbb', address: '172.30.0.3', mac: '52:54:ac:1e:00:03', egress: egressB },
    { vmId: 'aaaa', tapName: 'bgr-aaaa', address: '172.30.0.2', mac: '52:54:ac:1e:00:02', egress: false },
  ],
});

const REMOVE = `table inet banger
delete table inet banger
table bridge banger
delete table bridge banger
`;

const BRIDGE_TABLE = `table bridge banger {
	set vm_ipv4 {
		type ifname . ipv4_addr
		elements = { "bgr-aaaa" . 172.30.0.2, "bgr-bbbb" . 172.30.0.3 }
	}
	set vm_mac {
		type ifname . ether_addr
		elements = { "bgr-aaaa" . 52:54:ac:1e:00:02, "bgr-bbbb" . 52:54:ac:1e:00:03 }
	}
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname "bgr-*" jump from_vms
	}
	chain from_vms {
		iifname . ether saddr != @vm_mac drop
		ether type ip6 drop
		ether type ip iifname . ip saddr != @vm_ipv4 drop
		ether type arp iifname . arp saddr ip != @vm_ipv4 drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "bgr-*" drop
	}
}
`;

void test('buildRuleset without egress: isolation only, no forward accept, no NAT chain', () => {
  assert.equal(removeTablesScript(), REMOVE);
  assert.equal(
    buildRuleset(table(false)),
    REMOVE +
      `table inet banger {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname "banger0" jump from_vms
	}
	chain from_vms {
		ct state established,related accept
		ip daddr 172.30.0.1 udp dport 53 accept
		ip daddr 172.30.0.1 tcp dport 53 accept
		ip daddr 172.30.0.1 icmp type echo-request accept
		drop
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "banger0" drop
		oifname "banger0" ct state established,related accept
		oifname "banger0" drop
	}
}
` +
      BRIDGE_TABLE,
  );
});

void test('buildRuleset with egress: forward accept and masquerade for that source address only', () => {
  const text = buildRuleset(table(true));
  assert.equal(
    text,
    REMOVE +
      `table inet banger {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname "banger0" jump from_vms
	}
	chain from_vms {
		ct state established,related accept
		ip daddr 172.30.0.1 udp dport 53 accept
		ip daddr 172.30.0.1 tcp dport 53 accept
		ip daddr 172.30.0.1 icmp type echo-request accept
		drop
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "banger0" ip saddr 172.30.0.3 oifname != "banger0" accept comment "egress bbbb"
		iifname "banger0" drop
		oifname "banger0" ct state established,related accept
		oifname "banger0" drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 172.30.0.3 oifname != "banger0" masquerade comment "egress bbbb"
	}
}
` +
      BRIDGE_TABLE,
  );
  assert.equal((text.match(/masquerade/g) ?? []).length, 1);
  assert.doesNotMatch(text, /172\.30\.0\.2 .*masquerade/);
});

void test('buildRuleset with dns.port 5353: guests still ask bridge:53, DNATed to the port banger listens on', () => {
  const text = buildRuleset({ ...table(false), dnsPort: 5353 });
  assert.equal(
    text,
    REMOVE +
      `table inet banger {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname "banger0" jump from_vms
	}
	chain from_vms {
		ct state established,related accept
		ip daddr 172.30.0.1 udp dport 5353 accept
		ip daddr 172.30.0.1 tcp dport 5353 accept
		ip daddr 172.30.0.1 icmp type echo-request accept
		drop
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "banger0" drop
		oifname "banger0" ct state established,related accept
		oifname "banger0" drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "banger0" ip daddr 172.30.0.1 udp dport 53 dnat ip to 172.30.0.1:5353
		iifname "banger0" ip daddr 172.30.0.1 tcp dport 53 dnat ip to 172.30.0.1:5353
	}
}
` +
      BRIDGE_TABLE,
  );
  // Port 53 (the default) needs no NAT at all.
  assert.doesNotMatch(buildRuleset({ ...table(false), dnsPort: 53 }), /dnat/);
  assert.throws(() => buildRuleset({ ...table(false), dnsPort: 70000 }), /invalid DNS port/);
});

void test('buildRuleset with no VMs: empty sets are declared without elements', () => {
  const text = buildRuleset({ bridge: 'banger0', gateway: '172.30.0.1', vms: [] });
  assert.doesNotMatch(text, /elements/);
  assert.doesNotMatch(text, /masquerade/);
  assert.match(text, /iifname "bgr-\*" drop/);
});

void test('ipArgv: the exact ip commands', () => {
  assert.deepEqual(ipArgv.addBridge('banger0', '52:54:ac:1e:00:01'), [
    'link',
    'add',
    'name',
    'banger0',
    'address',
    '52:54:ac:1e:00:01',
    'type',
    'bridge',
  ]);
  assert.deepEqual(ipArgv.bridgeAddress('banger0', '172.30.0.1/24'), [
    'addr',
    'replace',
    '172.30.0.1/24',
    'dev',
    'banger0',
  ]);
  assert.deepEqual(ipArgv.addTap('bgr-x'), ['tuntap', 'add', 'dev', 'bgr-x', 'mode', 'tap']);
  assert.deepEqual(ipArgv.enslave('bgr-x', 'banger0'), ['link', 'set', 'dev', 'bgr-x', 'master', 'banger0']);
  assert.deepEqual(ipArgv.isolate('bgr-x'), ['link', 'set', 'dev', 'bgr-x', 'type', 'bridge_slave', 'isolated', 'on']);
  assert.deepEqual(ipArgv.up('bgr-x'), ['link', 'set', 'dev', 'bgr-x', 'up']);
  assert.deepEqual(ipArgv.del('bgr-x'), ['link', 'del', 'dev', 'bgr-x']);
});

/**
 * A fake host: links by name, nft scripts applied, sysctl value. Enough for the command sequence of
 * TapNetwork to be checked without touching any network.
 */
function fakeHost() {
  const links = new Map<string, { kind: string; master?: string; isolated?: boolean; up?: boolean }>();
  const calls: string[] = [];
  const nftScripts: string[] = [];
  let ipForward = '0';
  const ok = (stdout = '') => ({ code: 0, stdout, stderr: '' });
  const run: CommandRunner = (cmd: string, args: readonly string[], opts: RunOptions = {}) => {
    calls.push([cmd, ...args].join(' '));
    const a = [...args];
    if (cmd === 'ip' && a[0] === '-j') {
      if (a[4] === 'dev') {
        const l = links.get(a[5]!);
        if (!l) return Promise.resolve({ code: 1, stdout: '', stderr: 'does not exist' });
        return Promise.resolve(ok(JSON.stringify([linkJson(a[5]!, l)])));
      }
      const slaves = [...links].filter(([, l]) => l.master === a[5]).map(([n, l]) => linkJson(n, l));
      return Promise.resolve(ok(JSON.stringify(slaves)));
    }
    if (cmd === 'ip') {
      if (a[0] === 'link' && a[1] === 'add') links.set(a[3]!, { kind: 'bridge' });
      else if (a[0] === 'tuntap') links.set(a[3]!, { kind: 'tun' });
      else if (a[0] === 'link' && a[1] === 'del') {
        links.delete(a[3]!);
        for (const l of links.values()) if (l.master === a[3]) delete l.master;
      } else if (a[0] === 'link' && a[4] === 'master') links.get(a[3]!)!.master = a[5]!;
      else if (a[0] === 'link' && a[4] === 'type') links.get(a[3]!)!.isolated = true;
      else if (a[0] === 'link' && a[4] === 'up') links.get(a[3]!)!.up = true;
      return Promise.resolve(ok());
    }
    if (cmd === 'nft') {
      if (a[0] === '-f') nftScripts.push(String(opts.input));
      return Promise.resolve(ok());
    }
    if (cmd === 'sysctl') {
      if (a[0] === '-n') return Promise.resolve(ok(ipForward + '\n'));
      ipForward = a[2]!.split('=')[1]!;
      return Promise.resolve(ok());
    }
    return Promise.reject(new Error(`unexpected ${cmd}`));
  };
  return { run, links, calls, nftScripts, ipForward: () => ipForward };
}

function linkJson(name: string, l: { kind: string; master?: string; isolated?: boolean; up?: boolean }) {
  return {
    ifname: name,
    flags: l.up ? ['UP'] : [],
    master: l.master,
    linkinfo: { info_kind: l.kind, info_slave_data: l.master ? { isolated: l.isolated === true } : undefined },
  };
}

void test('TapNetwork against a fake host: attach is idempotent, egress switches forwarding, down removes it all', async () => {
  const dir = scratchDir('banger-tap-');
  try {
    const host = fakeHost();
    const statePath = join(dir, 'state', 'tap.json');
    const net = new TapNetwork({
      run: host.run,
      statePath,
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log: silentLogger(),
    });

    const a = await net.attach('aaaaaaaaaaaa', { egress: false });
    assert.deepEqual(a, {
      tapName: 'bgr-aaaaaaaaaaa',
      guestCidr: '172.30.0.2/24',
      gateway: '172.30.0.1',
      dns: '172.30.0.1',
      mac: '52:54:ac:1e:00:02',
    });
    assert.deepEqual(
      host.calls.filter((c) => !c.includes('-j')),
      [
        'ip link add name banger0 address 52:54:ac:1e:00:01 type bridge',
        'ip addr replace 172.30.0.1/24 dev banger0',
        'ip link set dev banger0 up',
        'nft -f -',
        'ip tuntap add dev bgr-aaaaaaaaaaa mode tap',
        'ip link set dev bgr-aaaaaaaaaaa master banger0',
        'ip link set dev bgr-aaaaaaaaaaa type bridge_slave isolated on',
        'ip link set dev bgr-aaaaaaaaaaa up',
      ],
    );
    assert.equal(host.ipForward(), '0');

    const b = await net.attach('bbbbbbbbbbbb', { egress: true, mac: '02:00:00:00:00:0b' });
    assert.equal(b.guestCidr, '172.30.0.3/24');
    assert.equal(b.mac, '02:00:00:00:00:0b');
    assert.equal(host.ipForward(), '1', 'egress needs forwarding');
    assert.match(host.nftScripts.at(-1)!, /ip saddr 172\.30\.0\.3 oifname != "banger0" masquerade/);

    // Same VM again (a restart): same tap and address, nothing recreated.
    host.calls.length = 0;
    assert.deepEqual(await net.attach('aaaaaaaaaaaa', { egress: false }), a);
    assert.ok(!host.calls.some((c) => c.startsWith('ip tuntap') || c.startsWith('ip link add')), host.calls.join('\n'));

    const st = JSON.parse(await readFile(statePath, 'utf8')) as TapState;
    assert.deepEqual(Object.keys(st.vms).sort(), ['aaaaaaaaaaaa', 'bbbbbbbbbbbb']);
    assert.equal(st.ipForwardEnabled, true);

    const status = await net.status();
    assert.equal(status.bridge.exists, true);
    assert.deepEqual(
      status.vms.map((v) => [v.vmId, v.tapExists, v.enslaved, v.isolated]),
      [
        ['aaaaaaaaaaaa', true, true, true],
        ['bbbbbbbbbbbb', true, true, true],
      ],
    );

    await net.detach('bbbbbbbbbbbb');
    assert.equal(host.links.has('bgr-bbbbbbbbbbb'), false);
    assert.doesNotMatch(host.nftScripts.at(-1)!, /masquerade/);
    // The released address is handed out again.
    assert.equal((await net.attach('cccccccccccc', { egress: false })).guestCidr, '172.30.0.3/24');

    // A crash left a tap nobody recorded; reconcile with only VM a live removes c's tap and the stray.
    host.links.set('bgr-leftover', { kind: 'tun', master: 'banger0' });
    await net.reconcile(new Set(['aaaaaaaaaaaa', 'not-a-tap-vm']));
    assert.deepEqual([...host.links.keys()].sort(), ['banger0', 'bgr-aaaaaaaaaaa']);

    await net.down();
    assert.equal(host.links.size, 0);
    assert.equal(host.nftScripts.at(-1), removeTablesScript());
    assert.equal(host.ipForward(), '0', 'forwarding switched back off');
    await assert.rejects(readFile(statePath), /ENOENT/);
    await net.down(); // idempotent
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test('TapNetwork applies the configured DNS port to the rules it loads', async () => {
  const dir = scratchDir('banger-tap-');
  try {
    const host = fakeHost();
    const net = new TapNetwork({
      run: host.run,
      statePath: join(dir, 'tap.json'),
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log: silentLogger(),
      dnsPort: 5353,
    });
    const a = await net.attach('aaaaaaaaaaaa', { egress: false });
    assert.equal(a.dns, '172.30.0.1', 'the guest is told the bridge address; its resolver uses port 53');
    const rules = host.nftScripts.at(-1)!;
    assert.match(rules, /iifname "banger0" ip daddr 172\.30\.0\.1 udp dport 53 dnat ip to 172\.30\.0\.1:5353/);
    assert.match(rules, /ip daddr 172\.30\.0\.1 udp dport 5353 accept/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test('TapNetwork refuses a settings change while VMs are attached', async () => {
  const dir = scratchDir('banger-tap-');
  try {
    const host = fakeHost();
    const statePath = join(dir, 'tap.json');
    const log = silentLogger();
    await new TapNetwork({
      run: host.run,
      statePath,
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log,
    }).attach('v1', { egress: false });
    const moved = new TapNetwork({
      run: host.run,
      statePath,
      config: { bridge: 'banger0', subnet: '10.5.0.0/24' },
      log,
    });
    await assert.rejects(moved.attach('v2', { egress: false }), /settings changed/);
    await moved.reconcile(new Set()); // v1 is gone: now the old bridge can be replaced
    assert.equal((await moved.attach('v2', { egress: false })).guestCidr, '10.5.0.2/24');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
