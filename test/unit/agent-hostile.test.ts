import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { BangerError } from '../../src/errors/index.js';
import { AGENT_SYNC, FRAME_HEADER_BYTES, FrameKind } from '../../src/protocol/agent.js';
import { FrameDecoder, encodeFrame } from '../../src/protocol/agent-frames.js';
import { closedWithin, controlBytes, raw, readAll, startAgent, type AgentHarness } from '../helpers/agent-harness.js';

let h: AgentHarness;
const servers: Server[] = [];
before(async () => {
  h = await startAgent();
});
after(async () => {
  for (const s of servers) s.close();
  await h.close();
});

/** Reads control messages the agent sends on `sock`. */
function controlReader(sock: Socket): () => Promise<Record<string, unknown>> {
  const dec = new FrameDecoder({ sync: true });
  const queue: Record<string, unknown>[] = [];
  const waiters: ((m: Record<string, unknown>) => void)[] = [];
  sock.on('data', (d: Buffer) => {
    for (const f of dec.push(d)) {
      if (f.kind !== FrameKind.Control) continue;
      const m = JSON.parse(f.payload.toString()) as Record<string, unknown>;
      const w = waiters.shift();
      if (w) w(m);
      else queue.push(m);
    }
  });
  return () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiters.push(r)));
}

/** A fake agent: greets, then hands each control message from the daemon to `onMessage`. */
let fakeN = 0;
async function fakeAgent(
  onMessage: (m: Record<string, unknown>, sock: Socket) => void,
  greeting: Buffer = Buffer.from(AGENT_SYNC),
): Promise<string> {
  const path = join(h.dir, `fake${fakeN++}.sock`);
  const server = createServer((sock) => {
    sock.on('error', () => {});
    sock.write(greeting);
    const dec = new FrameDecoder({ sync: true });
    sock.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) if (f.kind === FrameKind.Control) onMessage(JSON.parse(f.payload.toString()), sock);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

const reply = (id: unknown, result: unknown) =>
  encodeFrame(FrameKind.Control, 0, Buffer.from(JSON.stringify({ type: 'reply', id, ok: true, result })));
const helloResult = { protocol: 1, agentVersion: 'fake', pid: 1, node: 'v18.20.0', features: ['exec'] };

test('an oversized frame from the daemon side drops that connection; the agent serves the next one', async () => {
  const sock = await h.raw();
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32BE(5 * 1024 * 1024, 0); // over the 4 MiB cap; no body follows
  sock.write(Buffer.concat([AGENT_SYNC, header]));
  await closedWithin(sock, 2000);
  const c = await h.client();
  assert.equal((await c.hello()).agentVersion, 'test');
  c.close();
});

test('an unknown request type gets an Unimplemented reply and the connection stays usable', async () => {
  const sock = await h.raw();
  const next = controlReader(sock);
  sock.write(controlBytes({ type: 'reboot', id: 5 }));
  const r = await next();
  assert.equal(r.id, 5);
  assert.equal(r.ok, false);
  assert.equal((r.error as { code: string }).code, 'Unimplemented');
  sock.write(controlBytes({ type: 'exec', id: 6, channel: 1, command: {}, stdin: false }, false));
  assert.equal(((await next()).error as { code: string }).code, 'InvalidArgument');
  sock.write(controlBytes({ type: 'hello', id: 7, protocol: 1 }, false));
  const hello = await next();
  assert.deepEqual([hello.id, hello.ok], [7, true]);
  sock.destroy();
});

test('a control message without a request id that fails validation drops the connection', async () => {
  const sock = await h.raw();
  sock.write(controlBytes({ type: 'nonsense' }));
  await closedWithin(sock, 2000);
});

test('an oversized frame from the agent fails pending requests with Unavailable', async () => {
  const path = await fakeAgent((_m, sock) => {
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUInt32BE(5 * 1024 * 1024, 0);
    sock.write(header);
  });
  const c = new AgentClient(await raw(path), { label: 'evil' });
  await assert.rejects(
    c.hello(),
    (e: BangerError) => e.code === 'Unavailable' && /evil.*broke the protocol/.test(e.message),
  );
  assert.equal(c.closed, true);
  await assert.rejects(c.stats(), (e: BangerError) => e.code === 'Unavailable');
  const good = await h.client();
  assert.equal((await good.hello()).protocol, 1);
});

test('an unknown message type from the agent drops the connection', async () => {
  const path = await fakeAgent((_m, sock) =>
    sock.write(encodeFrame(FrameKind.Control, 0, Buffer.from('{"type":"surprise","id":1}'))),
  );
  const c = new AgentClient(await raw(path));
  await assert.rejects(c.hello(), (e: BangerError) => e.code === 'Unavailable');
});

test('an agent that sends half a frame and stalls: the request times out and nothing is left pending', async () => {
  const path = await fakeAgent((m, sock) => sock.write(reply(m.id, helloResult).subarray(0, 20)));
  const c = new AgentClient(await raw(path), { label: 'slow' });
  const started = Date.now();
  await assert.rejects(
    c.hello({ timeoutMs: 300 }),
    (e: BangerError) => e.code === 'DeadlineExceeded' && /slow.*hello/.test(e.message),
  );
  assert.ok(Date.now() - started < 2000);
  assert.equal(c.pendingRequests, 0);
  c.close();
});

test('output beyond the granted credit drops the connection and fails the process with Unavailable', async () => {
  const path = await fakeAgent((m, sock) => {
    if (m.type !== 'exec') return;
    sock.write(reply(m.id, { pid: 42 }));
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    for (let i = 0; i < 5; i++) sock.write(encodeFrame(FrameKind.Stdout, m.channel as number, chunk)); // 320 KiB > 256 KiB window
  });
  const c = new AgentClient(await raw(path));
  const p = await c.exec({ argv: ['yes'] });
  // Nobody reads stdout, so no credit goes back: the fifth chunk is past the window.
  await assert.rejects(p.exited, (e: BangerError) => e.code === 'Unavailable' && /credit/.test(e.message));
  assert.ok((await readAll(p.stdout)).length <= 256 * 1024);
});

test('bytes before the greeting are skipped; control characters in agent errors are escaped', async () => {
  const junk = Buffer.concat([
    Buffer.from('stale bytes of an earlier connection \x00\xb4\x42'),
    Buffer.from(AGENT_SYNC),
  ]);
  const path = await fakeAgent((m, sock) => {
    if (m.type === 'hello') sock.write(reply(m.id, helloResult));
    else
      sock.write(
        encodeFrame(
          FrameKind.Control,
          0,
          Buffer.from(
            JSON.stringify({ type: 'reply', id: m.id, ok: false, error: { code: 'Internal', message: 'boom\x1b[2J' } }),
          ),
        ),
      );
  }, junk);
  const c = new AgentClient(await raw(path));
  assert.equal((await c.hello()).agentVersion, 'fake');
  await assert.rejects(
    c.stats(),
    (e: BangerError) => e.code === 'Internal' && e.message.includes('boom\\e[2J') && !e.message.includes('\x1b'),
  );
  c.close();
});

test('a result that does not match its schema drops the connection', async () => {
  const path = await fakeAgent((m, sock) => sock.write(reply(m.id, { protocol: 'one' })));
  const c = new AgentClient(await raw(path));
  await assert.rejects(c.hello(), (e: BangerError) => e.code === 'Unavailable');
  assert.equal(c.closed, true);
});

test('the agent survives the daemon going away: its processes are killed and the next connection is served', async () => {
  const first = await h.client();
  const p = await first.exec({ argv: ['sleep', '30'] });
  const servedBefore = h.served();
  first.close();
  await assert.rejects(p.exited, (e: BangerError) => e.code === 'Unavailable');
  const deadline = Date.now() + 3000;
  while (alive(p.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(alive(p.pid), false, 'the process of the dropped connection still runs');
  assert.ok(h.served() > servedBefore);
  const second = await h.client();
  const q = await second.exec({ argv: ['echo', 'again'] });
  assert.equal((await readAll(q.stdout)).toString(), 'again\n');
  assert.equal((await q.exited).code, 0);
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
