import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { rmSync, writeFileSync, readFileSync, appendFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FrameSplitter, watchGuestPorts } from '../../src/daemon/services/vm/guest-ports.js';
import { capConsoleLog, readConsoleTail, withConsoleTail } from '../../src/daemon/services/vm/console.js';
import { capturedExec } from '../../src/daemon/guest/capped.js';
import type { GuestExecOptions, GuestExecResult, GuestSession } from '../../src/daemon/guest/session.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

/** A guest that writes `chunks` to stdout (honouring abort) and then exits 0. */
function fakeGuest(chunks: () => Iterable<Buffer>, opts: { hangAfter?: boolean } = {}): GuestSession {
  return {
    exec(_cmd: string, o: GuestExecOptions = {}): Promise<GuestExecResult> {
      return new Promise((resolve, reject) => {
        const src = Readable.from(chunks());
        const onAbort = () => {
          src.destroy();
          reject(new Error('aborted'));
        };
        o.signal?.addEventListener('abort', onAbort, { once: true });
        if (o.signal?.aborted) return onAbort();
        src.on('data', (d: Buffer) => {
          if (!o.signal?.aborted) o.stdout?.write(d);
        });
        src.on('end', () => {
          if (opts.hangAfter) return; // a guest that never exits
          o.signal?.removeEventListener('abort', onAbort);
          resolve({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });
        });
      });
    },
  };
}

function* repeat(chunk: Buffer, times: number) {
  for (let i = 0; i < times; i++) yield chunk;
}

const LISTEN_8080 =
  '  sl  local_address rem_address   st\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n';

test('port frames are found whatever the chunking, including a delimiter split across chunks', () => {
  const frames: string[] = [];
  const s = new FrameSplitter(1024, (f) => frames.push(f.toString()), () => assert.fail('no overflow'));
  const stream = 'one@@\ntwo@@\n@@\nthree@@\n';
  // every split point, including inside "@@\n"
  for (let cut = 0; cut <= stream.length; cut++) {
    frames.length = 0;
    s.push(Buffer.from(stream.slice(0, cut)));
    s.push(Buffer.from(stream.slice(cut)));
    assert.deepEqual(frames, ['one', 'two', '', 'three'], `cut at ${cut}`);
  }
  frames.length = 0;
  for (const ch of stream) s.push(Buffer.from(ch));
  assert.deepEqual(frames, ['one', 'two', '', 'three'], 'one byte at a time');
});

test('a guest that streams 64 MiB without a port frame ends the watch with an error, in bounded memory', async () => {
  const before = process.memoryUsage().rss;
  const mib = Buffer.alloc(1024 * 1024, 'x');
  const changes: number[][] = [];
  const started = Date.now();
  await assert.rejects(
    watchGuestPorts(fakeGuest(() => repeat(mib, 64)), '10.0.2.15', (p) => changes.push([...p]), new AbortController().signal),
    (e: BangerError) => e.code === 'ResourceExhausted' && /port listing larger than/.test(e.message),
  );
  assert.ok(Date.now() - started < 5000, 'it gives up quickly instead of rescanning a growing buffer');
  assert.ok(process.memoryUsage().rss - before < 64 * 1024 * 1024, 'it did not hold the stream in memory');
  assert.deepEqual(changes, []);
});

test('well-formed port frames still report changes', async () => {
  const changes: number[][] = [];
  await watchGuestPorts(
    fakeGuest(() => [Buffer.from(LISTEN_8080 + '@@\n'), Buffer.from(LISTEN_8080 + '@@\n' + '@@\n')]),
    '10.0.2.15',
    (p) => changes.push([...p]),
    new AbortController().signal,
  );
  assert.deepEqual(changes, [[8080], []]);
});

test('collected guest output is capped and timed out', async () => {
  const mib = Buffer.alloc(1024 * 1024, 'y');
  await assert.rejects(
    capturedExec(fakeGuest(() => repeat(mib, 64)), 'ss -H -ltnp', { maxBytes: 1024 * 1024, timeoutMs: 10_000 }),
    (e: BangerError) => e.code === 'ResourceExhausted',
  );
  await assert.rejects(
    capturedExec(fakeGuest(() => [Buffer.from('a')], { hangAfter: true }), 'ss', { maxBytes: 1024, timeoutMs: 200 }),
    (e: BangerError) => e.code === 'DeadlineExceeded',
  );
  const ok = await capturedExec(fakeGuest(() => [Buffer.from('hello')]), 'echo', { maxBytes: 1024, timeoutMs: 1000 });
  assert.equal(ok.stdout, 'hello');
});

test('the console log is rotated past its cap and `vm logs` still reads its end across both files', async () => {
  const dir = scratchDir('banger-console-');
  try {
    const log = join(dir, 'console.log');
    writeFileSync(log, '');
    for (let i = 0; i < 3000; i++) appendFileSync(log, `line ${i}\n`);
    assert.equal(await capConsoleLog(log, 4096), true);
    assert.equal(statSync(log).size, 0);
    assert.ok(statSync(`${log}.1`).size <= 4096);
    appendFileSync(log, 'after rotation\n');
    const tail = await readConsoleTail(log, 64 * 1024);
    assert.match(tail, /line 2999\nafter rotation\n$/);
    assert.doesNotMatch(tail, /line 0\n/);
    assert.equal(await capConsoleLog(log, 4096), false, 'under the cap: left alone');
    assert.equal(readFileSync(log, 'utf8'), 'after rotation\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a boot that fails shows the last console lines, escaped, so a --rm VM still says where it stopped', async () => {
  const dir = scratchDir('banger-console-');
  try {
    const log = join(dir, 'console.log');
    const lines = Array.from({ length: 20 }, (_, i) => `line ${i}`);
    writeFileSync(log, `${lines.join('\r\n')}\r\n\x1b]0;pwned\x07stuck here\n`);
    const timeout = new BangerError(ErrorCode.DeadlineExceeded, 'the guest did not finish booting', { hint: 'h' });
    const e = (await withConsoleTail(timeout, log)) as BangerError;
    assert.equal(e.code, ErrorCode.DeadlineExceeded);
    assert.equal(e.hint, 'h');
    assert.deepEqual(e.message.split('\n'), [
      'the guest did not finish booting; its console ended with:',
      ...lines.slice(-7).map((l) => `  | ${l}`),
      '  | \\e]0;pwned\\x07stuck here',
    ]);

    writeFileSync(log, '');
    const empty = (await withConsoleTail(timeout, log)) as BangerError;
    assert.match(empty.message, /its console is empty \(the guest printed nothing\)$/);

    const other = new BangerError(ErrorCode.InvalidArgument, 'x');
    assert.equal(await withConsoleTail(other, log), other, 'other errors pass through untouched');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
