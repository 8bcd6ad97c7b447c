/**
 * Port lists from a hostile agent: the schemas refuse oversized and malformed lists, and a daemon-side
 * AgentClient that receives one drops that connection (the watch ends, later calls fail with Unavailable)
 * without throwing anywhere else.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import {
  AGENT_MAX_PORTS,
  AGENT_RESULT_SCHEMAS,
  AGENT_SYNC,
  FrameKind,
  agentMessageSchema,
  hostMessageSchema,
  portsEventSchema,
} from '../../src/protocol/agent.js';
import { FrameDecoder, encodeFrame } from '../../src/protocol/agent-frames.js';
import { raw } from '../helpers/agent-harness.js';
import { scratchDir } from '../helpers/scratch.js';

const entries = (n: number) => Array.from({ length: n }, (_, i) => ({ port: 1 + i, address: '0.0.0.0' }));

test('the ports event and the watchPorts result take at most AGENT_MAX_PORTS well-formed entries', () => {
  const ok = { type: 'ports', ports: entries(AGENT_MAX_PORTS), truncated: true };
  assert.equal(portsEventSchema.safeParse(ok).success, true);
  assert.equal(agentMessageSchema.safeParse(ok).success, true);
  assert.equal(AGENT_RESULT_SCHEMAS.watchPorts.safeParse({ ports: entries(3), truncated: false }).success, true);
  const bad: [string, unknown][] = [
    ['one entry too many', { type: 'ports', ports: entries(AGENT_MAX_PORTS + 1), truncated: false }],
    ['port 0', { type: 'ports', ports: [{ port: 0, address: '::' }], truncated: false }],
    ['port 65536', { type: 'ports', ports: [{ port: 65536, address: '::' }], truncated: false }],
    ['a fractional port', { type: 'ports', ports: [{ port: 80.5, address: '::' }], truncated: false }],
    ['an address with a terminal escape', { type: 'ports', ports: [{ port: 80, address: '\x1b[31m' }], truncated: false }],
    ['a long address', { type: 'ports', ports: [{ port: 80, address: '1'.repeat(46) }], truncated: false }],
    ['no truncated flag', { type: 'ports', ports: [] }],
    ['ports not a list', { type: 'ports', ports: 'all', truncated: false }],
  ];
  for (const [what, m] of bad) {
    assert.equal(agentMessageSchema.safeParse(m).success, false, what);
    assert.equal(AGENT_RESULT_SCHEMAS.watchPorts.safeParse(m).success, false, what);
  }
  assert.equal(hostMessageSchema.safeParse({ type: 'watchPorts', id: 3 }).success, true);
});

let dir: string;
const servers: Server[] = [];
before(async () => {
  dir = scratchDir('banger-ports-hostile-');
});
after(async () => {
  for (const s of servers) s.close();
  await rm(dir, { recursive: true, force: true });
});

/** A fake agent that answers watchPorts with `result`, then writes `then` (raw control messages). */
async function fakeAgent(result: unknown, then: object[]): Promise<string> {
  const path = join(dir, `a${servers.length}.sock`);
  const server = createServer((sock: Socket) => {
    sock.on('error', () => {});
    sock.write(AGENT_SYNC);
    const dec = new FrameDecoder({ sync: true });
    sock.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        if (f.kind !== FrameKind.Control) continue;
        const m = JSON.parse(f.payload.toString()) as { type: string; id: number };
        if (m.type !== 'watchPorts') continue;
        const send = (o: object) => sock.write(encodeFrame(FrameKind.Control, 0, Buffer.from(JSON.stringify(o))));
        send({ type: 'reply', id: m.id, ok: true, result });
        for (const o of then) send(o);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

const closedWith = (c: AgentClient) => new Promise<BangerError>((r) => c.onClose(r));

test('an oversized or malformed ports event drops the agent connection; the good list before it was taken', async () => {
  for (const badEvent of [
    { type: 'ports', ports: entries(AGENT_MAX_PORTS + 1), truncated: false },
    { type: 'ports', ports: [{ port: 8080, address: 'evil host' }], truncated: false },
  ]) {
    const good = { type: 'ports', ports: [{ port: 8080, address: '0.0.0.0' }], truncated: false };
    const path = await fakeAgent({ ports: [], truncated: false }, [good, badEvent]);
    const c = new AgentClient(await raw(path), { label: 'hostile' });
    const seen: number[][] = [];
    const closed = closedWith(c);
    const first = await c.watchPorts((l) => seen.push(l.ports.map((p) => p.port)));
    assert.deepEqual(first.ports, []);
    const err = await closed;
    assert.equal(err.code, ErrorCode.Unavailable);
    assert.match(err.message, /broke the protocol/);
    assert.deepEqual(seen, [[8080]], 'the valid event before the bad one was delivered, the bad one not');
    assert.equal(c.closed, true);
    await assert.rejects(c.stats(), (e: BangerError) => e.code === ErrorCode.Unavailable);
  }
});

test('a watchPorts reply that is not a port list drops the connection and fails the watch', async () => {
  const path = await fakeAgent({ ports: entries(AGENT_MAX_PORTS + 1), truncated: false }, []);
  const c = new AgentClient(await raw(path), { label: 'hostile' });
  await assert.rejects(c.watchPorts(() => assert.fail('no list from a broken reply')), (e: BangerError) => {
    assert.equal(e.code, ErrorCode.Unavailable);
    return true;
  });
  assert.equal(c.closed, true);
});
