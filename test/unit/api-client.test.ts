/**
 * The API's streaming client parts against a fake bangerd on a unix socket: session.send chunking,
 * session.logs/attach streams, vm.exec collection, routing of concurrent streams, cancellation.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  createMessageConnection,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  type CancellationToken,
  type MessageConnection,
} from 'vscode-jsonrpc/node.js';
import { connect, type Banger } from '../../src/client/api.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

interface SendCall {
  sendId: string;
  bytes: number;
  final: boolean;
  data: Buffer;
}

const dir = scratchDir('banger-api-');
const socketPath = join(dir, 'fake.sock');
const sends: SendCall[] = [];
const seen: string[] = [];
let cancelledLogs = 0;
let server: net.Server;
let b: Banger;

const cancelled = () => new ResponseError(-32800, 'cancelled', { bangerCode: 'Cancelled' });
const whenCancelled = (token: CancellationToken) =>
  new Promise<never>((_, reject) => token.onCancellationRequested(() => reject(cancelled())));

/** A fake daemon: each session's "output" is its name repeated; exec echoes stdin; attach echoes input. */
function serve(conn: MessageConnection, socket: net.Socket): void {
  const stdinByExec = new Map<string, (d: { data?: string; eof?: boolean }) => void>();
  const stdinByStream = new Map<string, (d: { data?: string }) => void>();
  conn.onNotification('exec/stdin', (m: { execId: string; data?: string; eof?: boolean }) => stdinByExec.get(m.execId)?.(m));
  conn.onNotification('session/stdin', (m: { streamId: string; data?: string }) => stdinByStream.get(m.streamId)?.(m));
  conn.onRequest((method: string, params: unknown, token: CancellationToken) => {
    seen.push(method);
    switch (method) {
      case 'session.send': {
        const p = params as { sendId: string; data: string; final: boolean };
        const data = Buffer.from(p.data, 'base64');
        sends.push({ sendId: p.sendId, bytes: data.length, final: p.final, data });
        return { bytes: data.length };
      }
      case 'session.logs': {
        const { streamId, session, follow } = params as { streamId: string; session: string; follow?: boolean };
        const text = Buffer.from(session.repeat(3));
        for (let i = 0; i < text.length; i += 2)
          void conn.sendNotification('session/output', {
            streamId,
            stream: 'stdout',
            offset: i,
            data: text.subarray(i, i + 2).toString('base64'),
          });
        const end = { stdoutOffset: text.length, stderrOffset: 0, session: sessionInfo(session) };
        if (!follow) return end;
        return whenCancelled(token).catch((e: unknown) => {
          cancelledLogs++;
          throw e;
        });
      }
      case 'session.attach': {
        const { streamId } = params as { streamId: string };
        let offset = 0;
        stdinByStream.set(streamId, (m) => {
          const d = Buffer.from(m.data ?? '', 'base64');
          void conn.sendNotification('session/output', { streamId, stream: 'stdout', offset, data: d.toString('base64') });
          offset += d.length;
        });
        return whenCancelled(token);
      }
      case 'vm.exec': {
        const { execId, argv } = params as { execId: string; argv: string[] };
        const out = (stream: string, s: string | Buffer) =>
          void conn.sendNotification('exec/output', { execId, stream, data: Buffer.from(s).toString('base64') });
        if (argv[0] === 'flood') {
          for (let i = 0; i < 8; i++) out('stdout', Buffer.alloc(1024, 'x'));
          return whenCancelled(token);
        }
        return new Promise((resolve) => {
          const input: Buffer[] = [];
          stdinByExec.set(execId, (m) => {
            if (m.data) input.push(Buffer.from(m.data, 'base64'));
            if (m.eof) {
              out('stdout', Buffer.concat(input));
              out('stderr', 'warn');
              resolve({ exitCode: 3 });
            }
          });
        });
      }
      case 'vm.list':
        // A daemon that goes away mid-request (stopped, crashed).
        socket.destroy();
        return new Promise(() => undefined);
      default:
        throw new ResponseError(-32601, `no method ${method}`);
    }
  });
  conn.listen();
}

function sessionInfo(name: string) {
  return {
    name,
    pid: null,
    state: 'exited' as const,
    exitCode: 0,
    signal: null,
    argv: ['x'],
    tty: false,
    cwd: null,
    startedAt: '2026-01-01T00:00:00Z',
    endedAt: null,
    stdoutBytes: 0,
    stderrBytes: 0,
    capBytes: 0,
    capped: false,
    attachedBy: null,
  };
}

void describe('the TypeScript API client against a fake daemon', () => {
  before(async () => {
    server = net.createServer((s) => serve(createMessageConnection(new SocketMessageReader(s), new SocketMessageWriter(s)), s));
    await new Promise<void>((r) => server.listen(socketPath, r));
    b = await connect({ socketPath });
  });
  after(async () => {
    await b.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('session.send splits a large buffer into 1 MiB requests under one sendId, final on the last', async () => {
    sends.length = 0;
    const big = Buffer.alloc(2.5 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = i % 251;
    const r = await b.session.send('vm', 'agent', big);
    assert.equal(r.bytes, big.length);
    assert.deepEqual(sends.map((s) => [s.bytes, s.final]), [[1048576, false], [1048576, false], [524288, true]]);
    assert.equal(new Set(sends.map((s) => s.sendId)).size, 1);
    assert.ok(Buffer.concat(sends.map((s) => s.data)).equals(big));
  });

  void it('session.send streams a Readable in pieces of at most 1 MiB; an empty send is one final request', async () => {
    sends.length = 0;
    const pieces = Array.from({ length: 48 }, (_, i) => Buffer.alloc(32 * 1024, i));
    await b.session.send('vm', 'agent', Readable.from(pieces));
    assert.ok(sends.every((s) => s.bytes <= 1024 * 1024));
    assert.deepEqual(sends.map((s) => s.final), [false, true]);
    assert.ok(Buffer.concat(sends.map((s) => s.data)).equals(Buffer.concat(pieces)));
    sends.length = 0;
    await b.session.send('vm', 'agent', '');
    assert.deepEqual(sends.map((s) => [s.bytes, s.final]), [[0, true]]);
  });

  void it('session.logs yields offset chunks in order, and concurrent streams on one connection stay apart', async () => {
    const read = async (name: string) => {
      const chunks: string[] = [];
      const logs = b.session.logs('vm', name, { from: 0 });
      for await (const c of logs) {
        assert.equal(c.stream, 'stdout');
        chunks.push(`${c.offset}:${c.data.toString()}`);
      }
      return { chunks, end: await logs.end };
    };
    const [a, c] = await Promise.all([read('alpha'), read('gamma')]);
    assert.equal(a.chunks.map((x) => x.split(':')[1]).join(''), 'alphaalphaalpha');
    assert.equal(c.chunks.map((x) => x.split(':')[1]).join(''), 'gammagammagamma');
    assert.equal(a.chunks[1], '2:ph');
    assert.equal(a.end.stdoutOffset, 15);
  });

  void it('breaking out of a followed session.logs cancels the request in the daemon', async () => {
    const before = cancelledLogs;
    let got = '';
    for await (const c of b.session.logs('vm', 'beta', { follow: true })) {
      got += c.data.toString();
      if (got.length >= 4) break;
    }
    assert.equal(got, 'beta');
    for (let i = 0; i < 50 && cancelledLogs === before; i++) await sleep(10);
    assert.equal(cancelledLogs, before + 1);
  });

  void it('aborting a followed session.logs ends the iteration with a Cancelled BangerError', async () => {
    const ac = new AbortController();
    const logs = b.session.logs('vm', 'delta', { follow: true, signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(
      (async () => {
        for await (const _ of logs) void _;
      })(),
      (e: unknown) => e instanceof BangerError && e.code === ErrorCode.Cancelled,
    );
  });

  void it('session.attach forwards writes and detaches, leaving the session alone', async () => {
    const att = b.session.attach('vm', 'agent', { from: 'end' });
    att.write('hello\n');
    const first = await att.output.next();
    assert.equal(first.done, false);
    assert.equal(first.value?.data.toString(), 'hello\n');
    att.detach();
    assert.deepEqual(await att.done, { detached: true });
  });

  void it('vm.exec sends stdin, collects stdout and stderr apart, and returns the exit code', async () => {
    const r = await b.vm.exec('vm', ['cat'], { stdin: Readable.from([Buffer.from('a'), Buffer.from('b')]) });
    assert.equal(r.code, 3);
    assert.equal(r.stdout.toString(), 'ab');
    assert.equal(r.stderr.toString(), 'warn');
    const streamed: string[] = [];
    const r2 = await b.vm.exec('vm', ['cat'], { stdin: 'xyz', onStdout: (d) => streamed.push(d.toString()) });
    assert.deepEqual(streamed, ['xyz']);
    assert.equal(r2.stdout.length, 0, 'a sink takes the output instead of the buffer');
  });

  void it('vm.exec stops a command whose output passes maxBuffer with ResourceExhausted', async () => {
    await assert.rejects(b.vm.exec('vm', ['flood'], { maxBuffer: 4096 }), (e: unknown) => {
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, ErrorCode.ResourceExhausted);
      return true;
    });
  });

  void it('a call with an aborted signal rejects with Cancelled and sends nothing', async () => {
    const ac = new AbortController();
    ac.abort();
    const count = seen.length;
    await assert.rejects(b.session.send('vm', 'agent', 'x', { signal: ac.signal }), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.Cancelled);
    await assert.rejects(b.vm.exec('vm', ['cat'], { signal: ac.signal }), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.Cancelled);
    assert.equal(seen.length, count);
  });

  void it('an unknown method maps to a BangerError (Unimplemented)', async () => {
    await assert.rejects(b.stats('vm'), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.Unimplemented);
  });

  void it('a call whose connection closes before the answer rejects with Unavailable instead of hanging', async () => {
    const other = await connect({ socketPath });
    const outcome = await Promise.race([
      other.vm.list().then(
        () => 'resolved',
        (e: unknown) => (e instanceof BangerError ? e.code : String(e)),
      ),
      sleep(3000).then(() => 'still pending after 3 s'),
    ]);
    await other.close();
    assert.equal(outcome, ErrorCode.Unavailable);
  });
});
