/**
 * A guest on the tap bridge asks bridge:53 (its resolver knows no other port); with `dns.port` 5353 the
 * rules must carry that to banger's DNS on bridge:5353. Real kernel, confined to two network namespaces
 * this test creates and deletes: "host" runs TapNetwork and a UDP responder, "guest" stands in for the VM
 * through a veth that takes the place of the VM's tap (same name, MAC and address, so the bridge's
 * anti-spoofing rules apply to it as to a VM).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { TapNetwork } from '../../src/daemon/services/network/tap.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (creates network namespaces)';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 or nftables is not installed';
  }
  return false;
}
const skip = skipReason();

// Answers every UDP datagram on ADDR:PORT with "answer:" + the datagram.
const RESPONDER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send('answer:' + m, r.port, r.address));
s.bind(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
setTimeout(() => process.exit(3), 20000);`;
// Sends one datagram to ADDR:PORT and prints the reply, or "timeout".
const ASK = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m) => { console.log(String(m)); process.exit(0); });
s.send('q', Number(process.argv[2]), process.argv[1]);
setTimeout(() => { console.log('timeout'); process.exit(0); }, 1500);`;

void describe('tap DNS on a port other than 53', { skip, timeout: 60_000 }, () => {
  const id = randomBytes(3).toString('hex');
  const hostNs = `banger-dh-${id}`;
  const guestNs = `banger-dg-${id}`;
  const inHost: CommandRunner = (cmd, args, opts) => runCommand('ip', ['netns', 'exec', hostNs, cmd, ...args], opts);
  const inGuest: CommandRunner = (cmd, args, opts) => runCommand('ip', ['netns', 'exec', guestNs, cmd, ...args], opts);
  let dir: string;

  before(async () => {
    await runCommand('ip', ['netns', 'add', hostNs]);
    await runCommand('ip', ['netns', 'add', guestNs]);
    dir = scratchDir('banger-tapdns-');
  });

  after(async () => {
    await runCommand('ip', ['netns', 'del', guestNs], { allowFailure: true });
    await runCommand('ip', ['netns', 'del', hostNs], { allowFailure: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a guest query to bridge:53 reaches the DNS server on bridge:5353', async () => {
    const net = new TapNetwork({
      run: inHost,
      statePath: join(dir, 'tap.json'),
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log: silentLogger(),
      dnsPort: 5353,
    });
    const a = await net.attach('aaaa00000001', { egress: false });
    // Swap the tap for a veth into the guest namespace, wired the way ensureTap wires a tap.
    await inHost('ip', ['link', 'del', 'dev', a.tapName]);
    await inHost('ip', ['link', 'add', a.tapName, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', guestNs]);
    await inHost('ip', ['link', 'set', 'dev', a.tapName, 'master', 'banger0']);
    await inHost('ip', ['link', 'set', 'dev', a.tapName, 'type', 'bridge_slave', 'isolated', 'on']);
    await inHost('ip', ['link', 'set', 'dev', a.tapName, 'up']);
    await inGuest('ip', ['link', 'set', 'dev', 'eth0', 'address', a.mac]);
    await inGuest('ip', ['addr', 'add', a.guestCidr, 'dev', 'eth0']);
    await inGuest('ip', ['link', 'set', 'dev', 'eth0', 'up']);

    const ask = async (port: number) =>
      (await inGuest(process.execPath, ['-e', ASK, a.gateway, String(port)])).stdout.trim();
    const stop = new AbortController();
    let responder: Promise<unknown> | undefined;
    const listening = new Promise<void>((resolve, reject) => {
      responder = inHost(process.execPath, ['-e', RESPONDER, a.gateway, '5353'], {
        signal: stop.signal,
        allowFailure: true,
        onOutput: (c) => {
          if (c.includes('listening')) resolve();
        },
      }).catch(reject);
    });
    try {
      await listening;
      assert.equal(await ask(53), 'answer:q', 'bridge:53 is carried to banger on 5353');
      // The same responder, rules for port 53: the query is not redirected, so nothing answers it.
      await new TapNetwork({
        run: inHost,
        statePath: join(dir, 'tap.json'),
        config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
        log: silentLogger(),
      }).up();
      assert.equal(await ask(53), 'timeout');
    } finally {
      stop.abort();
      await responder?.catch(() => undefined);
    }
  });
});
