import { test } from 'node:test';
import assert from 'node:assert/strict';
import { untilAborted } from '../../src/daemon/services/vm/until-aborted.js';
import { ErrorCode, isBangerError } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

test('a shared connection attempt outlives a waiter that gives up: the other waiter still gets it', async () => {
  let resolveShared!: (v: string) => void;
  const shared = new Promise<string>((r) => (resolveShared = r));
  const quitter = new AbortController();
  const first = untilAborted(shared, quitter.signal, 'cancelled while connecting');
  const second = untilAborted(shared, new AbortController().signal, 'cancelled while connecting');
  quitter.abort();
  await assert.rejects(first, (e: unknown) => isBangerError(e) && e.code === ErrorCode.Cancelled);
  resolveShared('session');
  assert.equal(await second, 'session');
});

test('an already aborted waiter is Cancelled at once; a failure of the attempt reaches every waiter', async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(untilAborted(new Promise(() => {}), ac.signal, 'x'), (e: unknown) => isBangerError(e) && e.code === ErrorCode.Cancelled);
  const failing = Promise.reject(new Error('host key mismatch'));
  await assert.rejects(untilAborted(failing, new AbortController().signal, 'x'), /host key mismatch/);
  await assert.rejects(untilAborted(failing, undefined, 'x'), /host key mismatch/);
});

/** A LiveVms holding one VM with an agent whose VMM never exits; the warnings it logs are collected. */
async function oneLiveVm() {
  const { mkdirSync } = await import('node:fs');
  const { LiveVms, newLiveVm } = await import('../../src/daemon/services/vm/live.js');
  const { Paths } = await import('../../src/shared/paths.js');
  const { silentLogger } = await import('../../src/shared/logger.js');
  const paths = new Paths(scratchDir('banger-live-'));
  const warnings: string[] = [];
  const log = silentLogger();
  log.warn = ((_o: unknown, msg: string) => void warnings.push(msg)) as typeof log.warn;
  const live = new LiveVms({ paths, log, clientKey: { privateKey: '' }, onUnexpectedExit: () => {} });
  const driver = { waitExit: () => new Promise<void>(() => {}) } as unknown as Parameters<typeof newLiveVm>[1];
  const vm = { id: 'v1', name: 'vm-one' } as Parameters<typeof live.agent>[0];
  mkdirSync(paths.vm(vm.id).dir, { recursive: true });
  const lv = newLiveVm({ pid: 1, accel: 'tcg', agent: true } as Parameters<typeof newLiveVm>[0], driver);
  live.add(vm.id, lv);
  return { live, lv, vm, warnings, socket: paths.vm(vm.id).agentSocket };
}

test('an agent whose VMM socket is gone (a stopped VM) is not retried: one failure, no reconnect warnings', async () => {
  const { live, vm, warnings } = await oneLiveVm();
  const t0 = Date.now();
  await assert.rejects(live.agent(vm), /cannot reach the guest agent of VM 'vm-one'/);
  assert.ok(Date.now() - t0 < 1000);
  assert.deepEqual(warnings, []);
});

test('an agent that drops the connection is retried a few times, apart; not while the VM is being stopped', async () => {
  const { createServer } = await import('node:net');
  const { live, lv, vm, warnings, socket } = await oneLiveVm();
  let accepted = 0;
  const server = createServer((s) => {
    accepted++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(socket, r));
  try {
    const t0 = Date.now();
    await assert.rejects(live.agent(vm), /closed the connection|hello/);
    assert.equal(accepted, 6);
    assert.equal(warnings.filter((w) => w === 'guest agent hello failed; reconnecting').length, 5);
    assert.ok(Date.now() - t0 >= 3400, `the attempts are spaced (500 ms, 600 ms, ...): took ${Date.now() - t0} ms`);
    accepted = 0;
    warnings.length = 0;
    lv.stopping = true;
    await assert.rejects(live.agent(vm));
    assert.equal(accepted, 1);
    assert.deepEqual(warnings.filter((w) => w.includes('reconnecting')), []);
  } finally {
    server.close();
  }
});

/** A fake agent on `socket` that answers hello (after `delayMs`), or drops each connection when `delayMs` is null. */
async function helloAgent(socket: string, delayMs: number | null) {
  const { createServer } = await import('node:net');
  const { AGENT_PROTOCOL_VERSION, AGENT_SYNC, FrameKind } = await import('../../src/protocol/agent.js');
  const { FrameDecoder, encodeFrame } = await import('../../src/protocol/agent-frames.js');
  const server = createServer((s) => {
    s.on('error', () => {});
    if (delayMs === null) {
      s.destroy();
      return;
    }
    s.write(Buffer.from(AGENT_SYNC));
    const dec = new FrameDecoder({ sync: true });
    s.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        const m = JSON.parse(f.payload.toString()) as { type: string; id: number };
        if (f.kind !== FrameKind.Control || m.type !== 'hello') continue;
        const result = { protocol: AGENT_PROTOCOL_VERSION, agentVersion: 'fake', pid: 1, node: 'v18.20.0', features: [] };
        setTimeout(() => s.write(encodeFrame(FrameKind.Control, 0, Buffer.from(JSON.stringify({ type: 'reply', id: m.id, ok: true, result })))), delayMs);
      }
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  return server;
}

test('vm exec right after a daemon restart takes the agent once it answers, not the SSH handshake still under way', async () => {
  const { AgentGuestSession } = await import('../../src/daemon/guest/agent-session.js');
  const { live, lv, vm, socket } = await oneLiveVm();
  const server = await helloAgent(socket, 50);
  lv.connecting = new Promise(() => {}); // an SSH handshake that takes its time
  try {
    const t0 = Date.now();
    const session = await live.execSession(vm);
    assert.ok(session instanceof AgentGuestSession, 'the agent was chosen');
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
  } finally {
    lv.watch.abort();
    lv.agent?.close();
    server.close();
  }
});

test('vm exec while the agent cannot be reached uses SSH; with neither, the error is SSH\'s', async () => {
  const { live, lv, vm, socket } = await oneLiveVm();
  const server = await helloAgent(socket, null);
  const ssh = { isClosed: false, onClose: () => () => {} };
  try {
    lv.connecting = new Promise((r) => setTimeout(() => r(ssh as never), 200));
    assert.equal(await live.execSession(vm), ssh);
    lv.session = undefined;
    lv.agentConnecting = undefined;
    lv.connecting = Promise.reject(new Error('ssh: host key mismatch'));
    await assert.rejects(live.execSession(vm), /host key mismatch/);
  } finally {
    lv.watch.abort();
    server.close();
  }
});
