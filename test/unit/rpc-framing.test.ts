/**
 * The daemon's RPC server on a temporary unix socket, fed raw bytes: oversized messages, garbage headers and
 * non-JSON bodies cost the sender its connection or an error reply, never the daemon's memory, log or
 * other clients.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BangerClient } from '../../src/client/client.js';
import { MAX_MESSAGE_BYTES, parseHeaderSection } from '../../src/daemon/rpc/framing.js';
import { RpcServer, capText, handler } from '../../src/daemon/rpc/server.js';
import { ErrorCode, type BangerError } from '../../src/errors/index.js';
import { DaemonMethods, type DaemonStatus } from '../../src/protocol/daemon.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { fileLogger, type Logger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const dir = scratchDir('banger-rpc-');
const socketPath = join(dir, 'test.sock');
const logFile = join(dir, 'daemon.log');
const status: DaemonStatus = {
  pid: 1,
  version: 'test',
  home: dir,
  socket: socketPath,
  logFile,
  startedAt: 'now',
  vms: { total: 0, running: 0 },
};
let server: RpcServer;
let log: Logger;
let created = 0;

const flushLog = () => new Promise<void>((resolve) => log.flush(() => resolve()));

function frame(body: string | Buffer): Buffer {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  return Buffer.concat([Buffer.from(`Content-Length: ${b.length}\r\n\r\n`, 'ascii'), b]);
}

/** A raw connection: what it receives, and when the daemon closes it. */
function rawConnect(): Promise<{ socket: net.Socket; received: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let data = '';
    socket.on('data', (d: Buffer) => (data += d.toString('utf8')));
    socket.on('error', () => undefined); // EPIPE/ECONNRESET once the daemon hangs up
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('connect', () => resolve({ socket, received: () => data, closed }));
    socket.once('error', reject);
  });
}

/** The first complete JSON-RPC message in `raw` (header + body). */
function firstMessage(raw: string): { id: unknown; error?: { code: number; message: string }; result?: unknown } {
  const m = /Content-Length: (\d+)\r\n\r\n/.exec(raw);
  assert.ok(m, `no framed reply in ${JSON.stringify(raw.slice(0, 200))}`);
  const start = m.index + m[0].length;
  return JSON.parse(raw.slice(start, start + Number(m[1]))) as never;
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function statusFromNewClient(): Promise<DaemonStatus> {
  const c = await BangerClient.connect(socketPath);
  try {
    return await c.call(DaemonMethods.status, undefined);
  } finally {
    c.close();
  }
}

void describe('RPC framing', () => {
  before(async () => {
    log = fileLogger(logFile, 'info');
    server = new RpcServer({
      socketPath,
      log,
      handlers: [
        handler(DaemonMethods.status, async () => status),
        handler(VmMethods.create, async () => {
          created++;
          throw new Error('not reached in these tests');
        }),
      ],
    });
    await server.listen();
  });
  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('a 64 MiB message closes that connection before its body is read; other clients are served', { timeout: 15_000 }, async () => {
    const { socket, closed } = await rawConnect();
    const total = 64 * 1024 * 1024;
    const rssBefore = process.memoryUsage().rss;
    socket.write(`Content-Length: ${total}\r\n\r\n{"jsonrpc":"2.0","id":1,"method":"daemon.status","params":{"pad":"`);
    // Written lazily, 64 KiB at a time as the socket drains, so only what the daemon accepts leaves this side.
    const chunk = Buffer.alloc(64 * 1024, 'a');
    let sent = 0;
    let gone = false;
    void closed.then(() => (gone = true));
    while (!gone && sent < total) {
      const more = socket.write(chunk);
      sent += chunk.length;
      if (!more) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
    }
    await closed;
    assert.ok(sent < 16 * 1024 * 1024, `the daemon took ${sent} bytes before hanging up`);
    const grown = process.memoryUsage().rss - rssBefore;
    assert.ok(grown < 100 * 1024 * 1024, `rss grew by ${grown} bytes`);
    assert.equal((await statusFromNewClient()).version, 'test');
  });

  void it('a message just over the cap is refused; one under it is read', { timeout: 15_000 }, async () => {
    const over = await rawConnect();
    over.socket.write(`Content-Length: ${MAX_MESSAGE_BYTES + 1}\r\n\r\n`);
    await over.closed;

    const under = await rawConnect();
    const body = JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'daemon.status', params: { pad: 'x'.repeat(1024 * 1024) } });
    under.socket.write(frame(body));
    await waitFor(() => under.received().includes('"id":7'));
    assert.equal((firstMessage(under.received()).result as DaemonStatus).version, 'test');
    under.socket.destroy();
  });

  void it('a malformed JSON body gets a parse error (-32700) and the connection keeps working', { timeout: 15_000 }, async () => {
    const c = await rawConnect();
    c.socket.write(frame('{"jsonrpc":"2.0","id":1,"method":'));
    await waitFor(() => c.received().includes('-32700'));
    const reply = firstMessage(c.received());
    assert.equal(reply.id, null);
    assert.equal(reply.error?.code, -32700);

    const before = c.received().length;
    c.socket.write(frame(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'daemon.status', params: null })));
    await waitFor(() => c.received().slice(before).includes('"id":2'));
    assert.equal((firstMessage(c.received().slice(before)).result as DaemonStatus).pid, 1);
    c.socket.destroy();
  });

  void it('JSON that is not a JSON-RPC message object gets invalid request (-32600)', { timeout: 15_000 }, async () => {
    const c = await rawConnect();
    c.socket.write(frame('[1,2,3]'));
    await waitFor(() => c.received().includes('-32600'));
    assert.equal(firstMessage(c.received()).error?.code, -32600);
    c.socket.destroy();
  });

  for (const [what, bytes] of [
    ['no Content-Length', 'Content-Type: application/json\r\n\r\n{}'],
    ['a non-numeric Content-Length', 'Content-Length: lots\r\n\r\n{}'],
    ['a line without a colon', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['a header that never ends', 'X'.repeat(64 * 1024)],
  ] as const) {
    void it(`a header with ${what} closes that connection`, { timeout: 15_000 }, async () => {
      const c = await rawConnect();
      c.socket.write(bytes);
      await c.closed;
      assert.equal(c.received(), '', 'nothing is answered on an unframeable stream');
      assert.equal((await statusFromNewClient()).pid, 1);
    });
  }

  void it('huge invalid params get a short error and leave a small log', { timeout: 15_000 }, async () => {
    const c = await BangerClient.connect(socketPath);
    const huge = 'q'.repeat(4 * 1024 * 1024);
    const err = await c.call(VmMethods.create, { vmm: huge as 'qemu' }).then(
      () => assert.fail('expected a failure'),
      (e: unknown) => e as BangerError,
    );
    c.close();
    assert.equal(err.code, ErrorCode.InvalidArgument);
    assert.match(err.message, /vmm/);
    assert.ok(err.message.length < 4096, `error message of ${err.message.length} chars`);
    assert.equal(created, 0, 'the handler never ran');
    await flushLog();
    const size = statSync(logFile).size;
    assert.ok(size < 64 * 1024, `log is ${size} bytes`);
  });

  void it('capText keeps short strings and marks what it cuts', () => {
    assert.equal(capText('abc', 5), 'abc');
    assert.equal(capText('abcdefgh', 3), 'abc… [5 more characters]');
  });

  void it('header parsing needs a numeric Content-Length and name: value lines', () => {
    assert.deepEqual(parseHeaderSection('Content-Length: 12'), { length: 12 });
    assert.deepEqual(parseHeaderSection('content-length:3\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8'), { length: 3 });
    assert.ok('error' in parseHeaderSection('Content-Type: x'));
    assert.ok('error' in parseHeaderSection('Content-Length: -1'));
    assert.ok('error' in parseHeaderSection('Content-Length: 1e9'));
    assert.ok('error' in parseHeaderSection('junk'));
  });
});

void describe('a request cancelled by its client', () => {
  const own = scratchDir('banger-rpc-linger-');
  const sock = join(own, 'linger.sock');
  const file = join(own, 'linger.log');
  let lingerLog: Logger;
  let srv: RpcServer;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const started: string[] = [];
  before(async () => {
    lingerLog = fileLogger(file, 'info');
    srv = new RpcServer({
      socketPath: sock,
      log: lingerLog,
      lingerWarnMs: 100,
      handlers: [
        // One ignores its cancellation (the bug the warning exists for), the other ends at once.
        handler(VmMethods.start, async () => {
          started.push('start');
          await released;
          throw new Error('released');
        }),
        handler(VmMethods.stop, async (_p, ctx) => {
          started.push('stop');
          await new Promise((_r, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)));
          throw new Error('not reached');
        }),
      ],
    });
    await srv.listen();
  });
  after(async () => {
    release();
    await srv.close();
    rmSync(own, { recursive: true, force: true });
  });

  void it('that goes on past the grace is named in a warning; one that ends is not', { timeout: 15_000 }, async () => {
    for (const m of [VmMethods.start, VmMethods.stop]) {
      const c = await BangerClient.connect(sock);
      void c.call(m, { name: 'x' }).catch(() => undefined);
      await waitFor(() => started.includes(m.method.slice(3)));
      c.close();
    }
    await new Promise((r) => setTimeout(r, 400));
    await new Promise<void>((r) => lingerLog.flush(() => r()));
    const warnings = readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('after it was cancelled'));
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0]!, /"method":"vm\.start".*rpc still running 100 ms after it was cancelled/);
  });
});
