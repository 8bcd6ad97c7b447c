import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { pingOnce, watchAgent, type AgentPingDeps } from '../../src/daemon/services/vm/agent-ping.js';

/** Deps whose agent and SSH answer as told; what the watch did is recorded. */
function fakeVm(opts: { agent: boolean; ssh: boolean; parked?: boolean }) {
  const state = { ...opts, closed: false, hellos: 0, probes: 0, dropped: [] as string[], warned: [] as string[] };
  const deps: AgentPingDeps = {
    hello: async () => {
      state.hellos++;
      if (!state.agent) throw new Error('timed out');
    },
    guestAnswers: async () => {
      state.probes++;
      if (!state.ssh) throw new Error('ssh timed out');
      return true;
    },
    gone: () => state.closed,
    parked: () => state.parked === true,
    drop: (reason) => {
      state.dropped.push(reason);
      state.closed = true;
    },
    warn: (m) => state.warned.push(m),
  };
  return { state, deps };
}

test('an agent that answers is left alone, and SSH is not asked', async () => {
  const { state, deps } = fakeVm({ agent: true, ssh: true });
  assert.equal(await pingOnce(deps, 10), 'answered');
  assert.equal(state.probes, 0);
  assert.deepEqual(state.dropped, []);
});

test('a silent agent in a guest that answers SSH is dropped (it died; the next command reconnects)', async () => {
  const { state, deps } = fakeVm({ agent: false, ssh: true });
  assert.equal(await pingOnce(deps, 10), 'dropped');
  assert.equal(state.dropped.length, 1);
  assert.match(state.dropped[0]!, /stopped answering while the guest answers SSH/);
});

test('a silent agent in a guest that answers nothing (stalled) is kept, with a warning, and serves once the guest is back', async () => {
  const { state, deps } = fakeVm({ agent: false, ssh: false });
  assert.equal(await pingOnce(deps, 10), 'stalled');
  assert.deepEqual(state.dropped, []);
  assert.match(state.warned[0]!, /stalled guest/);
  state.agent = true;
  assert.equal(await pingOnce(deps, 10), 'answered');
  assert.equal(state.closed, false);
});

test('a hello missed because the VM was parked meanwhile is no sign: no probe, no drop', async () => {
  const { state, deps } = fakeVm({ agent: false, ssh: true });
  deps.hello = async () => {
    state.parked = true;
    throw new Error('timed out');
  };
  assert.equal(await pingOnce(deps, 10), 'skipped');
  assert.equal(state.probes, 0);
  assert.deepEqual(state.dropped, []);
});

test('the watch pings on its interval, one ping at a time, skips a parked VM, and ends with the connection', async () => {
  const { state, deps } = fakeVm({ agent: true, ssh: true });
  let inFlight = 0;
  let most = 0;
  deps.hello = async () => {
    state.hellos++;
    inFlight++;
    most = Math.max(most, inFlight);
    await sleep(25); // slower than the interval
    inFlight--;
  };
  const stop = watchAgent(deps, { intervalMs: 5, timeoutMs: 50 });
  await sleep(120);
  assert.ok(state.hellos >= 2, `pinged ${state.hellos} times`);
  assert.equal(most, 1, 'never two pings at once');
  state.parked = true;
  await sleep(40);
  const whileParked = state.hellos;
  await sleep(60);
  assert.equal(state.hellos, whileParked, 'no ping while parked');
  state.parked = false;
  state.closed = true;
  await sleep(40);
  const afterClose = state.hellos;
  await sleep(60);
  assert.equal(state.hellos, afterClose, 'no ping once the connection is gone');
  stop();
});
