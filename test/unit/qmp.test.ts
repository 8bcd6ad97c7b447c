import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/errors/index.js';
import { QmpClient, QmpCommandError, type QmpEvent } from '../../src/daemon/vmm/qemu/qmp.js';
import { scratchDir } from '../helpers/scratch.js';

type Handler = (cmd: { execute: string; id?: unknown; arguments?: unknown }, sock: Socket) => void;

let dir: string;
before(async () => {
  dir = scratchDir('banger-qmp-');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** A fake QEMU monitor: sends the greeting, answers qmp_capabilities, hands other commands to `handler`. */
async function fakeQmp(
  handler: Handler,
  opts: { greeting?: boolean } = {},
): Promise<{ path: string; server: Server; received: string[] }> {
  const path = join(dir, `qmp${n++}.sock`);
  const received: string[] = [];
  const server = createServer((sock) => {
    if (opts.greeting !== false)
      sock.write(
        `${JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'Debian' }, capabilities: ['oob'] } })}\r\n`,
      );
    let buf = '';
    sock.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line) as { execute: string; id?: unknown };
        received.push(cmd.execute);
        if (cmd.execute === 'qmp_capabilities') sock.write(`${JSON.stringify({ return: {}, id: cmd.id })}\r\n`);
        else handler(cmd, sock);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, server, received };
}

const send = (sock: Socket, msg: unknown) => sock.write(`${JSON.stringify(msg)}\r\n`);

void test('connect negotiates capabilities and exposes the greeting', async () => {
  const { path, server, received } = await fakeQmp(() => {});
  const qmp = await QmpClient.connect(path);
  assert.equal(qmp.greeting.version.qemu.major, 7);
  assert.deepEqual(received, ['qmp_capabilities']);
  qmp.close();
  await qmp.closed;
  server.close();
});

void test('execute returns the reply matching its id, with events interleaved and replies out of order', async () => {
  const events: QmpEvent[] = [];
  const held: { id: unknown; sock: Socket }[] = [];
  const { path, server } = await fakeQmp((cmd, sock) => {
    if (cmd.execute === 'slow') {
      held.push({ id: cmd.id, sock });
      return;
    }
    send(sock, { event: 'RTC_CHANGE', data: { offset: 1 }, timestamp: { seconds: 1, microseconds: 0 } });
    // Split one reply across two writes: the client must buffer partial lines.
    const text = JSON.stringify({ return: { status: 'running', running: true }, id: cmd.id });
    sock.write(text.slice(0, 10));
    setTimeout(() => {
      sock.write(`${text.slice(10)}\r\n`);
      for (const h of held.splice(0)) send(h.sock, { return: 'slow-done', id: h.id });
    }, 20);
  });
  const qmp = await QmpClient.connect(path);
  qmp.onEvent((e) => events.push(e));
  const slow = qmp.execute<string>('slow');
  const status = await qmp.execute<{ status: string }>('query-status');
  assert.equal(status.status, 'running');
  assert.equal(await slow, 'slow-done');
  assert.deepEqual(
    events.map((e) => e.event),
    ['RTC_CHANGE'],
  );
  qmp.close();
  server.close();
});

void test('a QMP error reply rejects with QmpCommandError carrying the class and description', async () => {
  const { path, server } = await fakeQmp((cmd, sock) =>
    send(sock, { error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: cmd.id }),
  );
  const qmp = await QmpClient.connect(path);
  await assert.rejects(qmp.execute('nope', { a: 1 }), (e: unknown) => {
    assert.ok(e instanceof QmpCommandError);
    assert.equal(e.qmpClass, 'CommandNotFound');
    assert.match(e.message, /nope/);
    return true;
  });
  qmp.close();
  server.close();
});

void test('arguments are sent as given', async () => {
  let seen: unknown;
  const { path, server } = await fakeQmp((cmd, sock) => {
    seen = cmd.arguments;
    send(sock, { return: {}, id: cmd.id });
  });
  const qmp = await QmpClient.connect(path);
  await qmp.execute('migrate', { uri: 'exec:cat > state' });
  assert.deepEqual(seen, { uri: 'exec:cat > state' });
  qmp.close();
  server.close();
});

void test('the connection closing (QEMU exiting) rejects pending commands and resolves closed', async () => {
  const { path, server } = await fakeQmp((_cmd, sock) => {
    send(sock, { event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' } });
    sock.destroy();
  });
  const qmp = await QmpClient.connect(path);
  const shutdown = qmp.waitEvent('SHUTDOWN');
  await assert.rejects(
    qmp.execute('system_powerdown'),
    (e: unknown) => e instanceof BangerError && e.code === 'Unavailable',
  );
  assert.equal((await shutdown).event, 'SHUTDOWN');
  await qmp.closed;
  assert.equal(qmp.isOpen, false);
  await assert.rejects(qmp.execute('query-status'), /closed/);
  server.close();
});

void test('connect to a socket nobody listens on rejects with Unavailable', async () => {
  await assert.rejects(QmpClient.connect(join(dir, 'nothing.sock')), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'Unavailable');
    assert.match(e.message, /cannot reach QEMU's control socket/);
    return true;
  });
});

void test('a silent server times out; an aborted call is cancelled', async () => {
  const silent = await fakeQmp(() => {}, { greeting: false });
  await assert.rejects(
    QmpClient.connect(silent.path, { timeoutMs: 100 }),
    (e: unknown) => e instanceof BangerError && e.code === 'DeadlineExceeded',
  );
  silent.server.close();

  const { path, server } = await fakeQmp(() => {});
  const qmp = await QmpClient.connect(path);
  await assert.rejects(
    qmp.execute('query-status', undefined, { timeoutMs: 50 }),
    (e: unknown) => e instanceof BangerError && e.code === 'DeadlineExceeded',
  );
  const ac = new AbortController();
  const p = qmp.execute('query-status', undefined, { signal: ac.signal });
  ac.abort();
  await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'Cancelled');
  qmp.close();
  server.close();
});
