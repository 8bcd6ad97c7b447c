/**
 * GuestPortForwarder's choice of source, with fakes: ports polled over SSH until the VM's agent connects,
 * then the agent's pushed lists (forwards follow them), back to SSH when the agent connection drops, and the
 * agent again (subscribed anew) once it reconnects. A VM without an agent, or with one too old to watch
 * ports, stays on SSH.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GuestExecOptions, GuestExecResult, GuestSession } from '../../src/daemon/guest/session.js';
import { GuestPortForwarder, type ForwarderAgents, type PortsAgent } from '../../src/daemon/services/vm/forwards.js';
import { newLiveVm, type LiveVm } from '../../src/daemon/services/vm/live.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import type { VmmDriver } from '../../src/daemon/vmm/driver.js';
import type { AgentPortList, ListeningPort } from '../../src/protocol/agent.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const dir = scratchDir('banger-fwd-');
const lives: LiveVm[] = [];
after(async () => {
  for (const l of lives) l.watch.abort();
  await sleep(50); // a handles.json write in flight lands before the directory goes
  rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
});

const vm = {
  id: 'vm1',
  name: 'web',
  networkMode: 'loopback',
  hostAddress: '127.77.0.9',
  guestAddress: '10.0.2.15',
} as VmRecord;

/** A guest whose SSH watch prints /proc/net/tcp rows for `ports` (all bound to 0.0.0.0) every 20 ms. */
class FakeSsh implements GuestSession {
  ports: number[] = [];
  running = 0;
  async exec(_cmd: string, o: GuestExecOptions = {}): Promise<GuestExecResult> {
    this.running++;
    try {
      while (!o.signal?.aborted) {
        const rows = this.ports.map((p, i) => `  ${i}: 00000000:${p.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A\n`);
        o.stdout?.write(Buffer.from(`${rows.join('')}@@\n`));
        await sleep(20);
      }
      throw new Error('aborted');
    } finally {
      this.running--;
    }
  }
}

/** One agent connection: answers watchPorts with `list`, pushes on `push`, ends on `close`. */
class FakeAgent implements PortsAgent {
  watches = 0;
  /** Fail every watchPorts (an agent that claims the feature but breaks it). */
  failWatch = false;
  private onChange: ((l: AgentPortList) => void) | null = null;
  private readonly closers = new Set<() => void>();
  closed = false;
  constructor(private list: ListeningPort[]) {}
  async watchPorts(onChange: (l: AgentPortList) => void): Promise<AgentPortList> {
    this.watches++;
    if (this.failWatch) throw new Error('guest agent: Internal: cannot read /proc/net/tcp');
    this.onChange = onChange;
    return { ports: this.list, truncated: false };
  }
  onClose(cb: () => void): () => void {
    if (this.closed) {
      cb();
      return () => {};
    }
    this.closers.add(cb);
    return () => this.closers.delete(cb);
  }
  push(list: ListeningPort[]): void {
    this.list = list;
    this.onChange?.({ ports: list, truncated: false });
  }
  close(): void {
    this.closed = true;
    for (const cb of this.closers) cb();
  }
}

/** The VM's agents as LiveVms offers them: `connect` plays a new connection being made. */
class FakeAgents implements ForwarderAgents {
  current: FakeAgent | undefined;
  /** The connected agent cannot watch ports (an image older than the `ports` feature). */
  tooOld = false;
  connectCalls = 0;
  private readonly listeners = new Set<() => void>();
  portsAgent(): PortsAgent | undefined {
    return this.current && !this.current.closed && !this.tooOld ? this.current : undefined;
  }
  onAgentConnected(_id: string, cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }
  connectInBackground(): void {
    this.connectCalls++;
  }
  connect(agent: FakeAgent): void {
    this.current = agent;
    for (const cb of [...this.listeners]) cb();
  }
}

function setup(agents?: FakeAgents, handle: Record<string, unknown> = {}) {
  const forwards = new Set<number>();
  /** Forwards left in the VMM by an older daemon, and the ones this daemon removed from it. */
  const vmmRemoved: number[] = [];
  let closed = 0;
  const driver = {
    portForwarding: {
      addForward: async () => assert.fail('guest ports are published by the proxy, not the VMM'),
      removeForward: async (_h: unknown, f: { hostAddress: string; guestPort: number }) => {
        assert.equal(f.hostAddress, vm.hostAddress);
        vmmRemoved.push(f.guestPort);
      },
    },
  } as unknown as VmmDriver;
  const handles = join(dir, `handles-${Math.random()}.json`);
  const live: LiveVm = newLiveVm({ pid: 1, startTime: 1, controlSocket: '', ...handle } as never, driver);
  live.hasAgent = agents !== undefined; // as boot sets it: the handle itself does not say
  const ssh = new FakeSsh();
  const fwd = new GuestPortForwarder({
    log: silentLogger(),
    publish: (v) => {
      assert.equal(v.hostAddress, vm.hostAddress);
      return {
        add: async (p) => void forwards.add(p),
        remove: async (p) => void forwards.delete(p),
        close: () => void closed++,
      };
    },
    session: async () => ssh,
    agents,
    handlesPath: () => handles,
    retryMs: 10,
  });
  fwd.start(vm, live);
  lives.push(live);
  return { forwards, live, ssh, handles, vmmRemoved, closed: () => closed };
}

async function until(what: string, ok: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b).join(',');

test('SSH until the agent connects, then the agent pushes; SSH again while it is gone; the agent again when back', async () => {
  const agents = new FakeAgents();
  const { forwards, live, ssh } = setup(agents);
  ssh.ports = [22, 8080];
  await until('the SSH watch to forward 8080', () => sorted(forwards) === '8080');
  assert.equal(live.portWatch, 'ssh');
  assert.ok(agents.connectCalls >= 1, 'the agent is being connected meanwhile');

  const a1 = new FakeAgent([
    { port: 22, address: '0.0.0.0' },
    { port: 3000, address: '0.0.0.0' },
    { port: 5432, address: '127.0.0.1' }, // loopback-only in the guest: not forwardable
    { port: 6000, address: '::1' },
  ]);
  agents.connect(a1);
  await until('the agent list to be applied', () => sorted(forwards) === '3000');
  assert.equal(live.portWatch, 'agent');
  await until('the SSH watch to stop', () => ssh.running === 0);
  assert.equal(a1.watches, 1);
  // Changes the guest makes while SSH is off are still seen: they come from the agent.
  ssh.ports = [22, 9999];
  a1.push([
    { port: 3000, address: '0.0.0.0' },
    { port: 8123, address: '::' },
    { port: 9000, address: '10.0.2.15' },
    { port: 9001, address: '::ffff:10.0.2.15' },
  ]);
  await until('the pushed change', () => sorted(forwards) === '3000,8123,9000,9001');
  a1.push([{ port: 9000, address: '10.0.2.15' }]);
  await until('the removals', () => sorted(forwards) === '9000');

  a1.close();
  await until('SSH to take over', () => live.portWatch === 'ssh' && sorted(forwards) === '9999');
  const callsBefore = agents.connectCalls;
  assert.ok(callsBefore >= 2, 'the dropped agent is connected again in the background');

  const a2 = new FakeAgent([{ port: 4000, address: '0.0.0.0' }]);
  agents.connect(a2);
  await until('the new connection to be watched', () => live.portWatch === 'agent' && sorted(forwards) === '4000');
  assert.equal(a2.watches, 1, 'subscribed anew on the new connection');
  await until('SSH to stop again', () => ssh.running === 0);
});

test('a VM without an agent, or with an agent too old to watch ports, keeps polling over SSH', async () => {
  const none = setup(undefined);
  none.ssh.ports = [8080];
  await until('8080 over SSH', () => sorted(none.forwards) === '8080');
  assert.equal(none.live.portWatch, 'ssh');

  const agents = new FakeAgents();
  agents.tooOld = true;
  const old = setup(agents);
  old.ssh.ports = [8080];
  await until('8080 over SSH', () => sorted(old.forwards) === '8080');
  agents.connect(new FakeAgent([{ port: 1234, address: '0.0.0.0' }]));
  await sleep(200);
  assert.equal(old.live.portWatch, 'ssh');
  assert.equal(old.ssh.running, 1, 'the SSH watch was not interrupted');
  old.ssh.ports = [8080, 8081];
  await until('a later change over SSH', () => sorted(old.forwards) === '8080,8081');
});

test('an agent whose watchPorts fails is not asked again on that connection: SSH keeps the forwards right', async () => {
  const agents = new FakeAgents();
  const { forwards, live, ssh } = setup(agents);
  ssh.ports = [8080];
  await until('8080 over SSH', () => sorted(forwards) === '8080');
  const broken = new FakeAgent([]);
  broken.failWatch = true;
  agents.connect(broken);
  await until('the failed watch', () => broken.watches === 1);
  await sleep(200);
  assert.equal(broken.watches, 1, 'asked once, not in a loop');
  assert.equal(live.portWatch, 'ssh');
  ssh.ports = [8080, 8081];
  await until('a change over SSH', () => sorted(forwards) === '8080,8081');
  // The next connection is tried again.
  agents.connect(new FakeAgent([{ port: 7000, address: '0.0.0.0' }]));
  await until('the new connection to be used', () => live.portWatch === 'agent' && sorted(forwards) === '7000');
});

test('forwards an older daemon left in the VMM are removed and forgotten; the proxy publishes them again', async () => {
  const { forwards, live, ssh, handles, vmmRemoved } = setup(undefined, { forwards: [8080, 9090], agent: true });
  ssh.ports = [8080];
  await until('8080 published again', () => sorted(forwards) === '8080');
  assert.deepEqual(vmmRemoved.sort(), [8080, 9090]);
  const h = JSON.parse(readFileSync(handles, 'utf8')) as { forwards?: number[]; agent?: boolean };
  assert.equal(h.forwards, undefined);
  assert.equal(h.agent, true, 'what else handles.json says is kept');
  assert.deepEqual([...live.forwards], [8080]);
});

test("the VM's published ports are closed when the daemon lets go of it", async () => {
  const { forwards, live, ssh, closed } = setup(undefined);
  ssh.ports = [8080];
  await until('8080', () => sorted(forwards) === '8080');
  assert.equal(closed(), 0);
  live.watch.abort();
  assert.equal(closed(), 1);
});
