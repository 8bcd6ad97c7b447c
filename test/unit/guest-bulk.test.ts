import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { after, test } from 'node:test';
import {
  BULK_CHUNK_BYTES,
  BULK_IN_FN,
  BULK_MIN_BYTES,
  BULK_STDERR_PREFIX,
  BulkStdinSession,
  bulkCommand,
  writeBulk,
} from '../../src/daemon/guest/bulk.js';
import type { GuestExecOptions, GuestSession } from '../../src/daemon/guest/session.js';
import { shq } from '../../src/daemon/guest/shell.js';
import { scratchDir } from '../helpers/scratch.js';

const dir = scratchDir('banger-bulk-');
const open: (Server | Socket)[] = [];
after(() => {
  // What a failed test left open.
  for (const h of open)
    if ('destroy' in h) h.destroy();
    else h.close();
  rmSync(dir, { recursive: true, force: true });
});
const TOKEN = 'a'.repeat(32);

/** A unix socket server that keeps what each connection sent; `closed` settles when that connection closes. */
function sink(path: string): Promise<{ server: Server; got: Promise<{ bytes: Buffer; closedAt: number }> }> {
  return new Promise((resolve) => {
    let onConn!: (s: Socket) => void;
    const got = new Promise<{ bytes: Buffer; closedAt: number }>((res) => {
      onConn = (s) => {
        open.push(s);
        const parts: Buffer[] = [];
        s.on('data', (d) => parts.push(d));
        s.on('close', () => res({ bytes: Buffer.concat(parts), closedAt: Date.now() }));
      };
    });
    const server = createServer((s) => onConn(s));
    open.push(server);
    server.listen(path, () => resolve({ server, got }));
  });
}

/** What the wire carries for `source` (writeBulk into a socket), as the guest's port would deliver it. */
async function wire(source: Readable, token = TOKEN): Promise<Buffer> {
  const path = join(dir, `w-${randomBytes(4).toString('hex')}.sock`);
  const { server, got } = await sink(path);
  const sock = connect(path);
  await new Promise((r) => sock.once('connect', r));
  await writeBulk(source, sock, token);
  sock.end();
  const { bytes } = await got;
  server.close();
  return bytes;
}

/** Runs the guest's bulk_in on `device` (a file standing in for the port) under dash, its stdout hashed. */
function bulkIn(device: string, token = TOKEN) {
  const r = spawnSync('/bin/sh', ['-c', `${BULK_IN_FN}bulk_in "$1" "$2" | sha256sum`, 'sh', token, device], {
    encoding: 'utf8',
  });
  return { status: r.status, hash: r.stdout.split(' ')[0], stderr: r.stderr };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `total` random bytes in pieces of `piece`. */
function pieces(total: number, piece: number): { data: Buffer; stream: () => Readable } {
  const data = randomBytes(total);
  return {
    data,
    stream: () =>
      Readable.from(
        (function* () {
          for (let i = 0; i < total; i += piece) yield data.subarray(i, i + piece);
        })(),
      ),
  };
}

void test('bulk: the guest reader gives back exactly what the host wrote, across chunks, skipping what came before the token', async () => {
  const { data, stream } = pieces(BULK_CHUNK_BYTES * 2 + 12345, 100_000);
  const bytes = await wire(stream());
  // More than one chunk, each announced by its length, then the end.
  assert.ok(bytes.subarray(0, 33).equals(Buffer.from(`${TOKEN}\n`)));
  const first = Number(/^(\d+)\n/.exec(bytes.subarray(33, 50).toString('latin1'))?.[1]);
  assert.ok(first >= BULK_CHUNK_BYTES && first < BULK_CHUNK_BYTES + 100_000, String(first));
  assert.ok(bytes.subarray(-2).equals(Buffer.from('0\n')));
  // An aborted earlier transfer's leftovers, with no newline, before the token.
  const dev = join(dir, 'port');
  writeFileSync(dev, Buffer.concat([randomBytes(5000).map((b) => (b === 10 ? 11 : b)), bytes]));
  const r = bulkIn(dev);
  assert.equal(r.stderr, '');
  assert.equal(r.status, 0);
  assert.equal(r.hash, sha(data));
});

void test('bulk: an empty stdin is one token line and the end marker', async () => {
  const bytes = await wire(Readable.from([]));
  assert.equal(bytes.toString(), `${TOKEN}\n0\n`);
  const dev = join(dir, 'empty');
  writeFileSync(dev, bytes);
  const r = bulkIn(dev);
  assert.equal(r.status, 0);
  assert.equal(r.hash, sha(Buffer.alloc(0)));
});

void test('bulk: a stream cut short or with a bad chunk header fails with a message, not a short success', async () => {
  const { stream } = pieces(300_000, 50_000);
  const bytes = await wire(stream());
  const cut = join(dir, 'cut');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 1000));
  const a = bulkIn(cut);
  assert.notEqual(a.status, null);
  assert.match(a.stderr, new RegExp(`${BULK_STDERR_PREFIX}the stream ended early`));
  const bad = join(dir, 'bad');
  writeFileSync(bad, `${TOKEN}\n12x\nhello`);
  assert.match(bulkIn(bad).stderr, /bad chunk header/);
  // A missing port is named.
  const none = spawnSync('/bin/sh', ['-c', `${BULK_IN_FN}bulk_in "$1"`, 'sh', TOKEN], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH },
  });
  if (!readFileSync('/proc/self/mountinfo', 'utf8').includes('virtio-ports')) {
    assert.equal(none.status, 1);
    assert.match(none.stderr, /no banger\.bulk port/);
  }
});

void test('bulk: a failing source rejects writeBulk', async () => {
  const path = join(dir, 'fail.sock');
  const { server } = await sink(path);
  const sock = connect(path);
  await new Promise((r) => sock.once('connect', r));
  const source = new Readable({
    read() {
      this.destroy(new Error('git died'));
    },
  });
  await assert.rejects(writeBulk(source, sock, TOKEN), /git died/);
  sock.destroy();
  server.close();
});

void test('bulkCommand: runs the command with the bulk stream as stdin; refuses a token that is not 32 hex digits', () => {
  const cmd = bulkCommand(TOKEN, "echo 'it''s'");
  assert.ok(cmd.startsWith(BULK_IN_FN));
  assert.ok(cmd.endsWith(`bulk_in ${TOKEN} | /bin/sh -c ${shq("echo 'it''s'")}`));
  assert.throws(() => bulkCommand('x; rm -rf /', 'true'));
});

/**
 * A session that records what it was asked to run and reads any stdin it got; a command reading the port ends
 * once `until` settles (in a guest, once it read the end marker).
 */
function recorder(until: () => Promise<unknown> = async () => {}) {
  const calls: { command: string; stdin: string | undefined }[] = [];
  const session: GuestSession & { isClosed: boolean } = {
    isClosed: false,
    async exec(command: string, opts: GuestExecOptions = {}) {
      calls.push({ command, stdin: opts.stdin ? await text(opts.stdin) : undefined });
      if (command.includes('bulk_in ')) await until();
      return { code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    },
  };
  return { session, calls };
}

void test('BulkStdinSession: stdin goes to the port with the token the command is given; the port closes once the command ended', async () => {
  const path = join(dir, 'session.sock');
  const { server, got } = await sink(path);
  let sawEnd!: () => void;
  const ended = new Promise<void>((r) => (sawEnd = r));
  server.on('connection', (c: Socket) => {
    let tail = '';
    c.on('data', (d: Buffer) => {
      tail = (tail + d.toString('latin1')).slice(-40);
      if (tail.endsWith('hello world0\n')) sawEnd();
    });
  });
  const inner = recorder(() => ended);
  const fallbacks: string[] = [];
  const s = new BulkStdinSession(inner.session, path, (e) => fallbacks.push(e.message));
  // Without stdin the command is the inner session's, unchanged.
  await s.exec('uname -a');
  assert.deepEqual(inner.calls[0], { command: 'uname -a', stdin: undefined });
  const r = await s.exec('cat > /x', { stdin: Readable.from([Buffer.from('hello '), Buffer.from('world')]) });
  const returnedAt = Date.now();
  assert.equal(r.code, 0);
  const call = inner.calls[1]!;
  assert.equal(call.stdin, undefined);
  const token = /bulk_in ([0-9a-f]{32}) \| \/bin\/sh -c 'cat > \/x'$/.exec(call.command)?.[1];
  assert.ok(token, call.command.slice(-80));
  const { bytes, closedAt } = await got;
  assert.equal(bytes.toString(), `${token}\n11\nhello world0\n`);
  assert.ok(closedAt >= returnedAt - 5);
  assert.deepEqual(fallbacks, []);
  server.close();
});

void test('BulkStdinSession: a port that cannot be reached sends stdin the usual way and says why', async () => {
  const inner = recorder();
  const fallbacks: string[] = [];
  const s = new BulkStdinSession(inner.session, join(dir, 'nothing.sock'), (e) => fallbacks.push(e.message));
  await s.exec('cat > /x', { stdin: Readable.from([Buffer.from('data')]) });
  assert.deepEqual(inner.calls, [{ command: 'cat > /x', stdin: 'data' }]);
  assert.equal(fallbacks.length, 1);
  assert.match(fallbacks[0]!, /ENOENT|nothing\.sock/);
});

void test('BulkStdinSession: a stdin known to be small goes the usual way, without the port; a large or unknown one takes it', async () => {
  const path = join(dir, 'small.sock');
  const { server } = await sink(path);
  const connections: Socket[] = [];
  server.on('connection', (c: Socket) => {
    connections.push(c);
    c.resume();
  });
  const inner = recorder();
  const fallbacks: string[] = [];
  const s = new BulkStdinSession(inner.session, path, (e) => fallbacks.push(e.message));
  await s.exec('cat > /x', { stdin: Readable.from([Buffer.from('small')]), stdinBytes: 5 });
  assert.deepEqual(inner.calls, [{ command: 'cat > /x', stdin: 'small' }]);
  assert.equal(connections.length, 0, 'the port was not connected');
  await s.exec('cat > /y', { stdin: Readable.from([Buffer.from('large')]), stdinBytes: BULK_MIN_BYTES });
  assert.match(inner.calls[1]!.command, /bulk_in [0-9a-f]{32} \| \/bin\/sh -c 'cat > \/y'$/);
  assert.equal(connections.length, 1, 'a stdin of BULK_MIN_BYTES or more goes through the port');
  assert.deepEqual(fallbacks, []);
  server.close();
});
