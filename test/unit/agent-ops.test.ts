import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { freemem, totalmem } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/errors/index.js';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { parseMeminfo, parseNetDev } from '../../src/agent/stats.js';
import { startAgent, type AgentHarness } from '../helpers/agent-harness.js';

let h: AgentHarness;
let c: AgentClient;
const ran: string[][] = [];
before(async () => {
  h = await startAgent({
    runCommand: async (argv) => {
      ran.push([...argv]);
      if (argv.includes('@0.001')) throw new Error('date: cannot set date: Operation not permitted');
    },
  });
  c = await h.client();
});
after(async () => {
  await h.close();
});

test('hello reports the protocol, the agent pid and its features', async () => {
  const r = await c.hello();
  assert.equal(r.protocol, 1);
  assert.equal(r.pid, process.pid);
  assert.ok(r.features.includes('exec') && r.features.includes('writeFile'));
});

test('stats agree with /proc and statfs', async () => {
  const s = await c.stats();
  assert.ok(s.cpu.percent >= 0 && s.cpu.percent <= 100);
  assert.equal(s.memory.totalBytes, totalmem());
  assert.equal(s.memory.usedBytes + s.memory.availableBytes, s.memory.totalBytes);
  assert.ok(Math.abs(s.memory.availableBytes - freemem()) < s.memory.totalBytes / 4);
  const uptime = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
  assert.ok(Math.abs(s.uptimeSec - uptime) < 5);
  const root = s.disks.find((d) => d.path === '/');
  assert.ok(root && root.totalBytes > 0 && root.usedBytes + root.freeBytes <= root.totalBytes);
  assert.equal(s.load.length, 3);
  assert.ok(s.agent.rssBytes > 0);
  const again = await c.stats(); // measured between the two calls, no extra sampling delay
  assert.ok(again.cpu.percent >= 0 && again.cpu.percent <= 100);
});

test('meminfo and net/dev parsing', () => {
  assert.deepEqual(parseMeminfo('MemTotal:       2048 kB\nMemFree:  10 kB\nMemAvailable:   1024 kB\n'), {
    total: 2048 * 1024,
    available: 1024 * 1024,
  });
  const netdev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0: 1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
  tap1:   10       1    0    0    0     0          0         0       20       2    0    0    0     0       0          0
`;
  assert.deepEqual(parseNetDev(netdev), { rxBytes: 1010, txBytes: 2020 });
});

test('writeFile writes the bytes with the mode, through a rename', async () => {
  const path = join(h.dir, 'script.sh');
  await writeFile(path, 'old');
  const r = await c.writeFile(path, Buffer.from('#!/bin/sh\necho hi\n'), 0o750);
  assert.equal(r.bytes, 18);
  assert.equal(await readFile(path, 'utf8'), '#!/bin/sh\necho hi\n');
  assert.equal((await stat(path)).mode & 0o7777, 0o750);
  assert.deepEqual(
    (await readdir(h.dir)).filter((f) => f.includes('banger-')),
    [],
    'a temporary file was left',
  );
});

test('writeFile streams content larger than a frame from a Readable', async () => {
  const path = join(h.dir, 'big.bin');
  const parts = Array.from({ length: 12 }, (_, i) => Buffer.alloc(512 * 1024, i)); // 6 MiB
  const r = await c.writeFile(path, Readable.from(parts), 0o600);
  assert.equal(r.bytes, 6 * 1024 * 1024);
  assert.ok((await readFile(path)).equals(Buffer.concat(parts)));
  assert.equal((await stat(path)).mode & 0o7777, 0o600);
});

test('writeFile into a missing directory is NotFound and leaves the connection usable', async () => {
  await assert.rejects(
    c.writeFile(join(h.dir, 'nope', 'x'), Buffer.alloc(1024 * 1024), 0o644),
    (e: BangerError) => e.code === 'NotFound' && /nope/.test(e.message),
  );
  await mkdir(join(h.dir, 'later'));
  assert.equal((await c.writeFile(join(h.dir, 'later', 'x'), Buffer.from('ok'), 0o644)).bytes, 2);
});

test('setClock runs date with the epoch and reports a failure', async () => {
  const r = await c.setClock(1_700_000_000_123);
  assert.deepEqual(ran.at(-1), ['date', '-u', '-s', '@1700000000.123']);
  assert.ok(r.epochMs > 0);
  await assert.rejects(c.setClock(1), (e: BangerError) => /not permitted/.test(e.message));
});

test('an aborted request is Cancelled and leaves nothing pending', async () => {
  const ac = new AbortController();
  const p = c.stats({ signal: ac.signal });
  ac.abort();
  await assert.rejects(p, (e: BangerError) => e.code === 'Cancelled');
  assert.equal(c.pendingRequests, 0);
});
