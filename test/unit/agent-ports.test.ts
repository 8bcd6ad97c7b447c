/**
 * The agent's listening-port watch: the /proc/net/tcp{,6} parser, the capped sorted list, and a real agent
 * (in-process, reading a temporary directory instead of /proc/net) that pushes the list only when it changes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseProcNetTcp, portList } from '../../src/agent/ports.js';
import { procAddress } from '../../src/shared/proc-net.js';
import type { AgentPortList } from '../../src/protocol/agent.js';
import { startAgent, type AgentHarness } from '../helpers/agent-harness.js';
import { scratchDir } from '../helpers/scratch.js';

const HEADER =
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
/** One /proc/net/tcp{,6} row: `addr` and `port` as the kernel prints them, `st` the state. */
const row = (n: number, addr: string, port: number, st = '0A') =>
  `  ${n}: ${addr}:${port.toString(16).toUpperCase().padStart(4, '0')} ${'0'.repeat(addr.length)}:0000 ${st} 00000000:00000000 00:00000000 00000000     0        0 ${1000 + n} 1 0000000000000000 100 0 0 10 0\n`;

const ANY4 = '00000000';
const LO4 = '0100007F';
const GUEST4 = '0F02000A'; // 10.0.2.15
const ANY6 = '0'.repeat(32);
const LO6 = '00000000000000000000000001000000';
const MAPPED_GUEST = '0000000000000000FFFF00000F02000A';

test('addresses of /proc/net/tcp and tcp6 come out as the text people and ss write', () => {
  assert.equal(procAddress(ANY4), '0.0.0.0');
  assert.equal(procAddress(LO4), '127.0.0.1');
  assert.equal(procAddress(GUEST4), '10.0.2.15');
  assert.equal(procAddress(ANY6), '::');
  assert.equal(procAddress(LO6), '::1');
  assert.equal(procAddress(MAPPED_GUEST), '::ffff:10.0.2.15');
  // fe80::5054:ff:fe12:3456, each 32-bit word printed little-endian
  assert.equal(procAddress('000080FE00000000FF005450563412FE'), 'fe80::5054:ff:fe12:3456');
  // 2001:db8:0:1:0:0:0:1: the longer zero run is the one shortened
  assert.equal(procAddress('B80D0120010000000000000001000000'), '2001:db8:0:1::1');
  for (const bad of ['', '0100007', 'XYZ0007F', '0'.repeat(16), `${ANY6}0`]) assert.equal(procAddress(bad), null, bad);
});

test('only listening sockets are read; other states, headers and junk lines are skipped', () => {
  const text =
    HEADER +
    row(0, ANY4, 8080) +
    row(1, LO4, 5432) +
    row(2, GUEST4, 22, '01') + // an established SSH connection
    row(3, GUEST4, 3000) +
    'garbage line\n' +
    '  9: 0100007F:ZZZZ 00000000:0000 0A\n' +
    row(4, ANY4, 0);
  assert.deepEqual(parseProcNetTcp(text), [
    { port: 8080, address: '0.0.0.0' },
    { port: 5432, address: '127.0.0.1' },
    { port: 3000, address: '10.0.2.15' },
  ]);
  assert.deepEqual(parseProcNetTcp(HEADER + row(0, ANY6, 8123) + row(1, LO6, 631) + row(2, MAPPED_GUEST, 9000)), [
    { port: 8123, address: '::' },
    { port: 631, address: '::1' },
    { port: 9000, address: '::ffff:10.0.2.15' },
  ]);
});

test('the list is sorted, without duplicates (SO_REUSEPORT listeners), and capped with truncated said', () => {
  const l = portList([
    { port: 9000, address: '::' },
    { port: 80, address: '0.0.0.0' },
    { port: 80, address: '0.0.0.0' },
    { port: 80, address: '::' },
  ]);
  assert.deepEqual(l, {
    ports: [
      { port: 80, address: '0.0.0.0' },
      { port: 80, address: '::' },
      { port: 9000, address: '::' },
    ],
    truncated: false,
  });
  const many = Array.from({ length: 2000 }, (_, i) => ({ port: 2000 - i, address: '0.0.0.0' }));
  const capped = portList(many);
  assert.equal(capped.ports.length, 1024);
  assert.equal(capped.truncated, true);
  assert.deepEqual(capped.ports[0], { port: 1, address: '0.0.0.0' }, 'the lowest ports are the ones kept');
});

let procDir: string;
before(async () => {
  procDir = scratchDir('banger-proc-net-');
});
after(() => rm(procDir, { recursive: true, force: true }));

/** A real agent whose `/proc/net` is a fresh directory holding `tcp` (and `tcp6` when given). */
async function agentWithProc(v4?: string, v6?: string): Promise<AgentHarness & { proc: string }> {
  const proc = await mkdtemp(join(procDir, 'p'));
  if (v4 !== undefined) await writeFile(`${proc}/tcp`, v4);
  if (v6 !== undefined) await writeFile(`${proc}/tcp6`, v6);
  const a = await startAgent({ ports: { procNetDir: proc, intervalMs: 40 } });
  return { ...a, proc };
}

/** Replaces a file whole, as /proc changes: the agent never reads it half written. */
async function put(path: string, text: string): Promise<void> {
  await writeFile(`${path}.new`, text);
  await rename(`${path}.new`, path);
}

async function until(what: string, ok: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test('watchPorts answers with the current list, then pushes a change once, and nothing while nothing changes', async (t) => {
  const a = await agentWithProc(HEADER + row(0, ANY4, 8080) + row(1, GUEST4, 22, '01'), HEADER + row(0, LO6, 631));
  t.after(() => a.close());
  const c = await a.client();
  assert.ok((await c.hello()).features.includes('ports'), 'the agent says it can watch ports');
  const events: AgentPortList[] = [];
  const first = await c.watchPorts((l) => events.push(l));
  assert.deepEqual(first, {
    ports: [
      { port: 631, address: '::1' },
      { port: 8080, address: '0.0.0.0' },
    ],
    truncated: false,
  });
  await sleep(300); // several reads of an unchanged /proc
  assert.equal(events.length, 0, 'no event while the listening sockets stay the same');
  // A server starts listening on 8123 (and an unrelated connection comes and goes: not a change).
  await put(`${a.proc}/tcp`, HEADER + row(0, ANY4, 8080) + row(1, ANY4, 8123) + row(2, GUEST4, 40000, '01'));
  await until('the change to be pushed', () => events.length > 0);
  await sleep(300);
  assert.equal(events.length, 1, 'one event per change');
  assert.deepEqual(events[0]!.ports, [
    { port: 631, address: '::1' },
    { port: 8080, address: '0.0.0.0' },
    { port: 8123, address: '0.0.0.0' },
  ]);
  // It exits: the port goes away.
  await put(`${a.proc}/tcp`, HEADER + row(0, ANY4, 8080));
  await until('the removal to be pushed', () => events.length === 2);
  assert.deepEqual(
    events[1]!.ports.map((p) => p.port),
    [631, 8080],
  );
});

test('two connections watch at once, a second watchPorts keeps one subscription, and a guest without tcp6 is fine', async (t) => {
  const a = await agentWithProc(HEADER + row(0, ANY4, 3000));
  t.after(() => a.close());
  const [c1, c2] = [await a.client(), await a.client()];
  const e1: AgentPortList[] = [];
  const e2: AgentPortList[] = [];
  assert.deepEqual((await c1.watchPorts((l) => e1.push(l))).ports, [{ port: 3000, address: '0.0.0.0' }]);
  assert.deepEqual((await c1.watchPorts((l) => e1.push(l))).ports, [{ port: 3000, address: '0.0.0.0' }]);
  await c2.watchPorts((l) => e2.push(l));
  await put(`${a.proc}/tcp`, HEADER + row(0, ANY4, 3000) + row(1, ANY4, 3001));
  await until('both to hear of it', () => e1.length > 0 && e2.length > 0);
  await sleep(200);
  assert.equal(e1.length, 1, 'the repeated watchPorts did not double the events');
  assert.equal(e2.length, 1);
  // The first connection goes; the second still hears of changes.
  c1.close();
  await put(`${a.proc}/tcp`, HEADER);
  await until('the second to hear of it', () => e2.length === 2);
  assert.deepEqual(e2[1]!.ports, []);
});

test('a /proc/net the agent cannot read answers an empty list instead of failing', async (t) => {
  const a = await agentWithProc();
  t.after(() => a.close());
  const c = await a.client();
  assert.deepEqual(await c.watchPorts(() => {}), { ports: [], truncated: false });
  assert.equal(c.closed, false);
});
