/**
 * A daemon starting over on a connection the agent still holds (a new daemon on the same virtio-serial port,
 * or a guest resumed from a snapshot under a new QEMU): AGENT_SYNC at a frame boundary restarts the protocol in
 * place, without the port being closed and reopened.
 */
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { AgentServer } from '../../src/agent/server.js';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { AGENT_SYNC, FrameKind } from '../../src/protocol/agent.js';
import { FrameDecoder, FrameError, RESTART_KIND, encodeFrame } from '../../src/protocol/agent-frames.js';

const control = (m: object) => encodeFrame(FrameKind.Control, 0, Buffer.from(JSON.stringify(m)));

test('a restartable decoder returns AGENT_SYNC at a frame boundary as a restart, last, and keeps what follows', () => {
  const after = control({ type: 'hello', id: 1 });
  const bytes = Buffer.concat([Buffer.from(AGENT_SYNC), control({ a: 1 }), Buffer.from(AGENT_SYNC), after]);
  // Byte by byte: a restart split over pushes is still seen whole.
  const dec = new FrameDecoder({ sync: true, restartable: true });
  const frames = [];
  let i = 0;
  for (; i < bytes.length; i++) {
    frames.push(...dec.push(bytes.subarray(i, i + 1)));
    if (frames.at(-1)?.kind === RESTART_KIND) break;
  }
  assert.deepEqual(frames.map((f) => f.kind), [FrameKind.Control, RESTART_KIND]);
  assert.equal(Buffer.concat(dec.rest()).length, 0, 'nothing after the restart was fed yet');
  // In one push: the frame after the restart is left for the next connection, undecoded.
  const whole = new FrameDecoder({ sync: true, restartable: true });
  const got = whole.push(bytes);
  assert.deepEqual(got.map((f) => f.kind), [FrameKind.Control, RESTART_KIND]);
  assert.deepEqual(Buffer.concat(whole.rest()), after);
  assert.throws(() => whole.push(after), /after a restart/);
});

test('without restarts, or when the bytes only begin like AGENT_SYNC, it is a length over the cap', () => {
  const plain = new FrameDecoder({ sync: true });
  assert.throws(() => plain.push(Buffer.concat([Buffer.from(AGENT_SYNC), Buffer.from(AGENT_SYNC), Buffer.alloc(1)])), FrameError);
  const near = Buffer.from(AGENT_SYNC);
  near[7] ^= 0xff;
  const dec = new FrameDecoder({ sync: true, restartable: true });
  assert.throws(() => dec.push(Buffer.concat([Buffer.from(AGENT_SYNC), near, Buffer.alloc(1)])), /exceeds/);
});

/** One agent-side stream whose host end can be replaced, as a virtio-serial port is when the daemon changes. */
function port() {
  let host: Duplex | null = null;
  const agentSide = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      host?.push(chunk);
      cb();
    },
  });
  const plugHost = () => {
    const h = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        agentSide.push(chunk);
        cb();
      },
    });
    host = h;
    return h;
  };
  return { agentSide, plugHost };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test('a second daemon on the same port is served at once; the first one\'s processes end', { timeout: 30_000 }, async () => {
  const server = new AgentServer({ agentVersion: 'test', python: null });
  const { agentSide, plugHost } = port();
  let served = false;
  void server.serve(agentSide).then(() => (served = true));

  const first = new AgentClient(plugHost());
  await first.hello({ timeoutMs: 5000 });
  const sleeper = await first.exec({ argv: ['sleep', '1000'] });
  assert.ok(alive(sleeper.pid));
  // The first daemon is gone without a word (killed, or left behind in a snapshot); a second one greets.
  const second = new AgentClient(plugHost());
  const t0 = Date.now();
  const hello = await second.hello({ timeoutMs: 5000 });
  assert.ok(Date.now() - t0 < 2000, `hello took ${Date.now() - t0} ms`);
  assert.equal(hello.agentVersion, 'test');
  const echo = await second.exec({ argv: ['echo', 'again'] });
  const out: Buffer[] = [];
  for await (const c of echo.stdout) out.push(c as Buffer);
  assert.equal(Buffer.concat(out).toString(), 'again\n');
  assert.deepEqual(await echo.exited, { code: 0, signal: null });
  // What the old connection had open ended as on a close; the port itself stayed served.
  const deadline = Date.now() + 5000;
  while (alive(sleeper.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(alive(sleeper.pid), false, 'the first daemon\'s process was ended');
  assert.equal(served, false, 'serve() still runs: the port was never closed');
  first.close();
  second.close();
  agentSide.destroy();
});

test('a new daemon does not take the reply to the old one\'s hello for its own', { timeout: 10_000 }, async () => {
  // What the agent was writing to the killed daemon (its greeting, replies to the first requests of a
  // connection) can reach the next one first: a write to the port blocks while no host is connected.
  const sent: Buffer[] = [];
  const host = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      sent.push(chunk);
      cb();
    },
  });
  const client = new AgentClient(host);
  const hello = client.hello({ timeoutMs: 5000 });
  const result = (agentVersion: string) => ({ protocol: 1, agentVersion, pid: 1, node: 'v18.20.0', features: [] });
  const stale = [1, 2, 3].map((id) => control({ type: 'reply', id, ok: true, result: result('the old daemon\'s') }));
  host.push(Buffer.concat([Buffer.from(AGENT_SYNC), ...stale]));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(client.pendingRequests, 1, 'the hello still waits for its own reply');
  const asked = new FrameDecoder({ sync: true }).push(Buffer.concat(sent)).map((f) => JSON.parse(f.payload.toString()) as { id: number });
  host.push(control({ type: 'reply', id: asked[0]!.id, ok: true, result: result('mine') }));
  assert.equal((await hello).agentVersion, 'mine');
  client.close();
});
