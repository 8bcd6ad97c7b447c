import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { VSOCK_REPLY_MAX_BYTES, connectVsock } from '../../src/daemon/guest/vsock.js';
import { AGENT_PROTOCOL_VERSION, AGENT_VSOCK_PORT } from '../../src/protocol/agent.js';
import { closedWithin, readAll, startAgent } from '../helpers/agent-harness.js';
import { listenFakeVsock } from '../helpers/fake-vsock.js';
import { scratchDir } from '../helpers/scratch.js';

let dir: string;
let n = 0;
const servers: Server[] = [];
before(async () => {
  dir = scratchDir('banger-vsock-');
});
after(async () => {
  for (const s of servers) s.close();
  await rm(dir, { recursive: true, force: true });
});

/**
 * A raw stand-in for Firecracker's vsock socket: `onConnect` gets the host's connection and the CONNECT line
 * it sent (once a newline arrived), and answers however the case needs.
 */
async function fakeFirecrackerEnd(onConnect: (sock: Socket, line: string) => void) {
  const path = join(dir, `v${n++}.sock`);
  const peers: Socket[] = [];
  const server = createServer((sock) => {
    peers.push(sock);
    sock.on('error', () => undefined);
    let head = '';
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      const nl = head.indexOf('\n');
      if (nl === -1) return;
      sock.off('data', onData);
      onConnect(sock, head.slice(0, nl + 1));
    };
    sock.on('data', onData);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return { path, peers };
}

/** Reads from `sock` until `want` bytes arrived. */
function readBytes(sock: Socket, want: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    let len = 0;
    const onData = (d: Buffer) => {
      got.push(d);
      len += d.length;
      if (len >= want) {
        sock.off('data', onData);
        resolve(Buffer.concat(got));
      }
    };
    sock.on('data', onData);
    sock.once('close', () => reject(new Error(`closed after ${len} of ${want} bytes`)));
  });
}

function assertUnavailable(pattern: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof BangerError, `expected a BangerError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.Unavailable, e.message);
    assert.match(e.message, pattern);
    return true;
  };
}

void describe('connectVsock (Firecracker host-initiated vsock)', { timeout: 20_000 }, () => {
  void it('sends CONNECT <port>, accepts OK, and keeps the bytes the guest sent in the same write as OK', async () => {
    const fc = await fakeFirecrackerEnd((sock, line) => {
      assert.equal(line, `CONNECT ${AGENT_VSOCK_PORT}\n`);
      sock.write('OK 1073741824\nguest-first');
      sock.on('data', (d) => sock.write(Buffer.concat([Buffer.from('echo:'), d])));
    });
    const sock = await connectVsock(fc.path, AGENT_VSOCK_PORT, { timeoutMs: 5000 });
    try {
      assert.equal((await readBytes(sock, 'guest-first'.length)).toString(), 'guest-first');
      sock.write('ping');
      assert.equal((await readBytes(sock, 'echo:ping'.length)).toString(), 'echo:ping');
    } finally {
      sock.destroy();
    }
  });

  void it('keeps guest bytes that arrive after a reply line split across writes', async () => {
    const fc = await fakeFirecrackerEnd((sock) => {
      sock.write('OK 10');
      setTimeout(() => sock.write('73741824\n\x00\x01binary'), 30);
    });
    const sock = await connectVsock(fc.path, 52, { timeoutMs: 5000 });
    try {
      assert.deepEqual(await readBytes(sock, 8), Buffer.from('\x00\x01binary', 'latin1'));
    } finally {
      sock.destroy();
    }
  });

  void it('carries the agent protocol to a guest agent through a Firecracker-like vsock end', async () => {
    const agent = await startAgent();
    const uds = join(dir, `mux${n++}.sock`);
    const mux = await listenFakeVsock(uds, (port) => (port === AGENT_VSOCK_PORT ? agent.path : undefined));
    try {
      const client = new AgentClient(await connectVsock(uds, AGENT_VSOCK_PORT, { timeoutMs: 5000 }));
      try {
        const hello = await client.hello({ timeoutMs: 5000 });
        assert.equal(hello.protocol, AGENT_PROTOCOL_VERSION);
        const proc = await client.exec({ argv: ['echo', 'over vsock'], timeoutMs: 5000 });
        assert.equal((await readAll(proc.stdout)).toString(), 'over vsock\n');
        assert.equal((await proc.exited).code, 0);
      } finally {
        client.close();
      }
      // A port no guest program listens on: Firecracker closes the connection.
      await assert.rejects(
        connectVsock(uds, 9999, { timeoutMs: 5000 }),
        assertUnavailable(/nothing in the guest accepted/),
      );
      assert.deepEqual(mux.connects, [AGENT_VSOCK_PORT, 9999]);
    } finally {
      await mux.close();
      await agent.close();
    }
  });

  void it('refusal: the connection closed without a reply is Unavailable', async () => {
    const fc = await fakeFirecrackerEnd((sock) => sock.end());
    await assert.rejects(
      connectVsock(fc.path, AGENT_VSOCK_PORT, { timeoutMs: 5000 }),
      assertUnavailable(/closed the connection to vsock port 1024 .*nothing in the guest accepted/),
    );
  });

  void it('a reply that is not OK <port> is refused and the connection dropped', async () => {
    for (const reply of ['ERR no such port\n', 'OK\n', 'OK 12 34\n', 'OK -1\n', 'ok 5\n', '\n']) {
      const fc = await fakeFirecrackerEnd((sock) => sock.write(reply));
      await assert.rejects(
        connectVsock(fc.path, AGENT_VSOCK_PORT, { timeoutMs: 5000 }),
        assertUnavailable(/unexpected reply to CONNECT/),
        JSON.stringify(reply),
      );
      await closedWithin(fc.peers[0]!, 2000);
    }
  });

  void it(`a reply line longer than ${VSOCK_REPLY_MAX_BYTES} bytes is refused without waiting for its end`, async () => {
    // No newline ever comes: the cap, not the timeout, must end it.
    const endless = await fakeFirecrackerEnd((sock) => sock.write(`OK ${'1'.repeat(VSOCK_REPLY_MAX_BYTES)}`));
    await assert.rejects(
      connectVsock(endless.path, AGENT_VSOCK_PORT, { timeoutMs: 60_000 }),
      assertUnavailable(/longer than 64 bytes/),
    );
    await closedWithin(endless.peers[0]!, 2000);
    // A newline past the cap, in one write.
    const long = await fakeFirecrackerEnd((sock) => sock.write(`OK ${'1'.repeat(70)}\n`));
    await assert.rejects(connectVsock(long.path, 1, { timeoutMs: 60_000 }), assertUnavailable(/longer than 64 bytes/));
  });

  void it('no reply within timeoutMs is Unavailable, and the connection is closed', async () => {
    const fc = await fakeFirecrackerEnd(() => undefined);
    await assert.rejects(
      connectVsock(fc.path, AGENT_VSOCK_PORT, { timeoutMs: 200 }),
      assertUnavailable(/no answer to CONNECT on vsock port 1024 .* within 200 ms/),
    );
    await closedWithin(fc.peers[0]!, 2000);
  });

  void it('a missing vsock socket is Unavailable with a hint to start the VM', async () => {
    await assert.rejects(connectVsock(join(dir, 'absent.sock'), AGENT_VSOCK_PORT), (e: unknown) => {
      assertUnavailable(/cannot connect to vsock port 1024 .*ENOENT/)(e);
      assert.match((e as BangerError).hint ?? '', /banger vm start/);
      return true;
    });
  });

  void it('an abort while waiting for the reply is Cancelled and closes the connection', async () => {
    const fc = await fakeFirecrackerEnd(() => undefined);
    const ac = new AbortController();
    const p = connectVsock(fc.path, AGENT_VSOCK_PORT, { signal: ac.signal, timeoutMs: 60_000 });
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === ErrorCode.Cancelled);
    await closedWithin(fc.peers[0]!, 2000);
  });

  void it('refuses a port outside 0..2^32-1', async () => {
    for (const port of [-1, 2 ** 32, 1.5])
      await assert.rejects(
        connectVsock('/nonexistent', port),
        (e: unknown) => e instanceof BangerError && e.code === ErrorCode.InvalidArgument,
      );
  });
});

void describe('the guest side of the vsock channel (Firecracker images)', () => {
  void it('the Python bridge passes each connection to the agent whole, both ways, and outlives a client', async () => {
    const { spawn } = await import('node:child_process');
    const { writeFile } = await import('node:fs/promises');
    const { existsSync } = await import('node:fs');
    const { VSOCK_BRIDGE } = await import('../../src/daemon/guest/init/vsock-bridge.js');
    const { AgentGuestSession } = await import('../../src/daemon/guest/agent-session.js');
    const { connect } = await import('node:net');
    const agent = await startAgent();
    const dir = scratchDir('banger-bridge-');
    const script = join(dir, 'vsock-bridge.py');
    const listen = join(dir, 'vsock-stand-in.sock');
    await writeFile(script, VSOCK_BRIDGE);
    // This host has no vsock: the bridge listens on a unix socket in its place, as BANGER_BRIDGE_LISTEN says.
    const bridge = spawn('python3', [script, String(AGENT_VSOCK_PORT), agent.path], {
      env: { ...process.env, BANGER_BRIDGE_LISTEN: listen },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    bridge.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    try {
      for (let i = 0; i < 100 && !existsSync(listen); i++) await new Promise((r) => setTimeout(r, 50));
      const through = () =>
        new Promise<Socket>((resolve, reject) => {
          const s = connect(listen, () => resolve(s));
          s.once('error', reject);
        });
      for (let round = 0; round < 2; round++) {
        const client = new AgentClient(await through());
        try {
          assert.equal((await client.hello({ timeoutMs: 5000 })).protocol, AGENT_PROTOCOL_VERSION);
          // 1 MiB each way: the bridge passes a large stream whole.
          const r = await new AgentGuestSession(client).exec('head -c 1048576 /dev/zero | tr "\\0" x; printf done >&2');
          assert.equal(r.code, 0);
          assert.equal(r.stdout.length, 1 << 20);
          assert.equal(r.stderr.toString(), 'done');
        } finally {
          client.close();
        }
      }
      assert.match(stderr, new RegExp(`banger-vsock-bridge: port ${AGENT_VSOCK_PORT} -> ${agent.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    } finally {
      bridge.kill('SIGKILL');
      await agent.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  void it('run-agent serves the agent through the bridge when the guest has a vsock device and no virtio-serial port', async () => {
    const { RUN_AGENT, GUEST_PATHS } = await import('../../src/daemon/guest/init/scripts.js');
    const branch = RUN_AGENT.slice(RUN_AGENT.indexOf('if [ -n "$vsock" ]; then'));
    assert.match(RUN_AGENT, /\[ -z "\$dev" \] && \[ -e \/dev\/vsock \]/);
    assert.ok(branch.includes(`python3 ${GUEST_PATHS.vsockBridge} ${AGENT_VSOCK_PORT} ${GUEST_PATHS.agentSocket} &`));
    assert.match(branch, new RegExp(`--listen ${GUEST_PATHS.agentSocket} --priority 0`));
  });
});
