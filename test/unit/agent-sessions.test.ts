import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { BangerError } from '../../src/errors/index.js';
import { AGENT_SESSION_NAME_RE } from '../../src/protocol/agent-sessions.js';
import { SESSION_NAME_RE } from '../../src/protocol/session.js';
import type { AgentHarness } from '../helpers/agent-harness.js';
import { readLogs, sessionRoot, startSessionAgent, waitEnded } from '../helpers/agent-sessions.js';

const ECHO = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/jsonl-echo.mjs');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const code = (c: string) => (e: unknown) => e instanceof BangerError && e.code === c;

let h: AgentHarness;
let c: AgentClient;
let root: string;
before(async () => {
  root = await sessionRoot();
  h = await startSessionAgent(root);
  c = await h.client();
  await c.hello();
});
after(async () => {
  await h.close();
});

/** A session's stdout once it includes `text` (or after 10 s). */
async function outputUntil(name: string, text: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const out = (await readLogs(c, name)).data.toString();
    if (out.includes(text) || Date.now() > deadline) return out;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('start returns while the process runs; list, show, stop and rm report its states', async () => {
  const t0 = Date.now();
  const s = await c.sessionStart({ name: 'sleeper', argv: ['sleep', '30'] });
  assert.ok(Date.now() - t0 < 10_000);
  assert.equal(s.state, 'running');
  assert.ok(s.pid !== null && s.pid > 0);
  assert.ok((await c.sessionList()).some((x) => x.name === 'sleeper' && x.state === 'running'));
  await assert.rejects(c.sessionRm('sleeper'), code('FailedPrecondition'));
  await c.sessionStop('sleeper');
  const ended = await waitEnded(c, 'sleeper');
  assert.deepEqual([ended.state, ended.exitCode, ended.signal, ended.pid], ['exited', null, 'SIGTERM', null]);
  assert.ok(ended.endedAt !== null);
  assert.deepEqual(await c.sessionRm('sleeper'), { removed: 'sleeper' });
  await assert.rejects(c.sessionShow('sleeper'), code('NotFound'));
});

test('output is kept with exact byte offsets: logs from N is bytes[N:] of what the process wrote', async () => {
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const file = join(dirname(root), 'payload');
  await writeFile(file, data);
  await c.sessionStart({ name: 'cat', argv: ['sh', '-c', `cat ${file}; echo to-stderr >&2; exit 3`] });
  const info = await waitEnded(c, 'cat');
  assert.deepEqual([info.exitCode, info.stdoutBytes, info.stderrBytes], [3, data.length, 10]);
  const all = await readLogs(c, 'cat');
  assert.equal(sha(all.data), sha(data));
  let expect = 0;
  for (const ch of all.chunks) {
    assert.equal(ch.offset, expect);
    expect += ch.data.length;
  }
  for (const n of [1, 65536, 1_000_003, data.length]) {
    const part = await readLogs(c, 'cat', { from: n });
    assert.equal(sha(part.data), sha(data.subarray(n)), `from ${n}`);
    if (part.chunks.length > 0) assert.equal(part.chunks[0].offset, n);
  }
  assert.equal((await readLogs(c, 'cat', { stream: 'stderr' })).data.toString(), 'to-stderr\n');
  await assert.rejects(readLogs(c, 'cat', { from: data.length + 1 }), code('InvalidArgument'));
});

test('bad names, unknown sessions and sends to an ended session fail with their codes', async () => {
  await assert.rejects(c.sessionStart({ name: '../x', argv: ['true'] }), code('InvalidArgument'));
  await assert.rejects(c.sessionStart({ name: '-x', argv: ['true'] }), code('InvalidArgument'));
  await assert.rejects(c.sessionShow('nope'), code('NotFound'));
  await assert.rejects(c.sessionSend('nope', Buffer.from('x\n')), code('NotFound'));
  await assert.rejects(c.sessionStart({ name: 'nocmd', argv: ['/no/such/command'] }), code('NotFound'));
  await assert.rejects(c.sessionShow('nocmd'), code('NotFound'));
  await c.sessionStart({ name: 'quick', argv: ['true'] });
  await waitEnded(c, 'quick');
  await assert.rejects(c.sessionStart({ name: 'quick', argv: ['true'] }), code('AlreadyExists'));
  await assert.rejects(c.sessionSend('quick', Buffer.from('late\n')), code('FailedPrecondition'));
  assert.equal(SESSION_NAME_RE.source, AGENT_SESSION_NAME_RE.source);
});

test('a send that closes stdin ends its input: the process reads to its end and a later send is refused', async () => {
  await c.sessionStart({ name: 'eof', argv: ['sh', '-c', 'cat; echo after-eof; sleep 30'] });
  await c.sessionSend('eof', Buffer.from('one\n'));
  await c.sessionSend('eof', Buffer.from('two\n'), { closeStdin: true });
  await assert.rejects(c.sessionSend('eof', Buffer.from('three\n')), (e: unknown) => {
    assert.ok(code('FailedPrecondition')(e));
    assert.match((e as Error).message, /eof is running but no longer reads its stdin/);
    return true;
  });
  assert.equal(await outputUntil('eof', 'after-eof'), 'one\ntwo\nafter-eof\n');
  assert.equal((await c.sessionShow('eof')).state, 'running');
  await c.sessionStop('eof');
  await waitEnded(c, 'eof');
});

test('a send to a process that stops reading its stdin half-way fails, and the session keeps running', async () => {
  await c.sessionStart({ name: 'half', argv: ['sh', '-c', 'head -c 100000 >/dev/null; exec 0<&-; echo closed; sleep 30'] });
  await assert.rejects(c.sessionSend('half', randomBytes(4 << 20)), code('FailedPrecondition'));
  assert.equal(await outputUntil('half', 'closed'), 'closed\n');
  assert.equal((await c.sessionShow('half')).state, 'running');
  await c.sessionStop('half');
  await waitEnded(c, 'half');
});

test('two concurrent senders of 1,000 lines each: 2,000 intact replies, each send in one piece', async () => {
  await c.sessionStart({ name: 'echo', argv: [process.execPath, ECHO] });
  const lines = (who: string) =>
    Buffer.from(
      Array.from({ length: 1000 }, (_, i) => JSON.stringify({ id: `${who}-${i}`, pad: 'x'.repeat(200) }) + '\n').join(
        '',
      ),
    );
  // Small pieces, so the two sends' frames interleave on the connection.
  async function* pieces(b: Buffer) {
    for (let i = 0; i < b.length; i += 777) yield b.subarray(i, i + 777);
  }
  const c2 = await h.client();
  const [a, b] = await Promise.all([
    c.sessionSend('echo', pieces(lines('a'))),
    c2.sessionSend('echo', pieces(lines('b'))),
  ]);
  assert.equal(a.bytes, lines('a').length);
  assert.equal(b.bytes, lines('b').length);
  await c.sessionSend('echo', Buffer.from('{"cmd":"exit"}\n'));
  const info = await waitEnded(c, 'echo');
  assert.equal(info.exitCode, 0);
  const replies = (await readLogs(c, 'echo')).data
    .toString()
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: string; seq: number; echo?: { pad: string } });
  assert.equal(replies.length, 2001);
  const ids = replies.slice(0, 2000).map((r) => r.id);
  const first = ids[0].split('-')[0];
  const second = first === 'a' ? 'b' : 'a';
  assert.deepEqual(ids, [
    ...Array.from({ length: 1000 }, (_, i) => `${first}-${i}`),
    ...Array.from({ length: 1000 }, (_, i) => `${second}-${i}`),
  ]);
  assert.ok(replies.slice(0, 2000).every((r, i) => r.seq === i + 1 && r.echo?.pad.length === 200));
});

test('attach is exclusive and names its holder; send works while attached; detach leaves it running', async () => {
  await c.sessionStart({ name: 'att', argv: [process.execPath, ECHO] });
  const got: Buffer[] = [];
  let seen = (): void => {};
  const a = await c.sessionAttach({
    name: 'att',
    from: 'start',
    client: 'alice@laptop (pid 42)',
    onOutput: (ch) => {
      got.push(ch.data);
      seen();
    },
  });
  assert.equal(a.start.session.attachedBy, 'alice@laptop (pid 42)');
  const c2 = await h.client();
  await assert.rejects(
    c2.sessionAttach({ name: 'att', client: 'bob', onOutput: () => {} }),
    (e: unknown) => code('Conflict')(e) && (e as Error).message.includes('alice@laptop (pid 42)'),
  );
  const arrived = new Promise<void>((r) => (seen = r));
  await c2.sessionSend('att', Buffer.from('{"id":"from-bob"}\n'));
  await arrived;
  assert.match(Buffer.concat(got).toString(), /"id":"from-bob"/);
  // The attach's own stdin: each write is one whole write.
  const second = new Promise<void>((r) => (seen = r));
  await a.write(Buffer.from('{"id":"from-alice"}\n'));
  await second;
  assert.match(Buffer.concat(got).toString(), /"id":"from-alice"/);
  a.detach();
  const end = await a.ended;
  assert.equal(end.reason, 'detached');
  assert.equal(end.stdoutOffset, Buffer.concat(got).length);
  assert.equal(end.session.state, 'running');
  assert.equal((await c.sessionShow('att')).attachedBy, null);
  // Now someone else may attach.
  const b = await c2.sessionAttach({ name: 'att', client: 'bob', onOutput: () => {} });
  await c.sessionStop('att');
  assert.equal((await b.ended).reason, 'exited');
});

test('reaching the cap is reported and does not block the process', async () => {
  const capRoot = await sessionRoot();
  const hc = await startSessionAgent(capRoot, 100_000);
  try {
    const cc = await hc.client();
    await cc.sessionStart({ name: 'flood', argv: ['sh', '-c', 'head -c 5000000 /dev/zero; echo done >&2'] });
    const info = await waitEnded(cc, 'flood');
    assert.deepEqual([info.exitCode, info.capped, info.stdoutBytes, info.stderrBytes], [0, true, 100_000, 5]);
    assert.equal((await readLogs(cc, 'flood', { stream: 'stderr' })).data.toString(), 'done\n');
  } finally {
    await hc.close();
  }
});

test('a tty session runs under a terminal; its output is on stdout', async () => {
  await c.sessionStart({ name: 'term', argv: ['sh', '-c', 'tty; stty size'], tty: true, size: { cols: 91, rows: 33 } });
  const info = await waitEnded(c, 'term');
  assert.equal(info.exitCode, 0);
  const out = (await readLogs(c, 'term')).data.toString();
  assert.match(out, /\/dev\/pts\//);
  assert.match(out, /33 91/);
});

test('a session with mise runs under `mise exec --` where a mise config applies in its directory, and shows its command as given', async () => {
  // A stand-in mise on the session's PATH: marks what it runs, as `mise exec` gives its command mise's variables.
  const base = dirname(root);
  const bin = join(base, 'fake-bin');
  const ws = join(base, 'ws-with-mise');
  const plain = join(base, 'ws-plain');
  await mkdir(bin, { recursive: true });
  await mkdir(ws, { recursive: true });
  await mkdir(plain, { recursive: true });
  await writeFile(join(bin, 'mise'), '#!/bin/sh\n[ "$1" = exec ] && [ "$2" = -- ] || exit 99\nshift 2\nUNDER_MISE=yes exec "$@"\n', {
    mode: 0o755,
  });
  await writeFile(join(ws, 'mise.toml'), '[env]\n');
  const env = { PATH: `${bin}:/usr/bin:/bin`, HOME: plain };
  const argv = ['sh', '-c', 'echo "${UNDER_MISE:-direct} $(pwd)"'];
  const run = async (name: string, cwd: string, mise: boolean) => {
    const s = await c.sessionStart({ name, argv, cwd, env, mise });
    assert.deepEqual(s.argv, argv);
    await waitEnded(c, name);
    const out = (await readLogs(c, name)).data.toString();
    await c.sessionRm(name);
    return out;
  };
  assert.equal(await run('mise-ws', ws, true), `yes ${ws}\n`);
  assert.equal(await run('mise-plain', plain, true), `direct ${plain}\n`, 'no mise config there: run directly');
  assert.equal(await run('mise-off', ws, false), `direct ${ws}\n`, 'without mise: as given');
});
