/**
 * Exec through banger-spawner (compiled here with the host's gcc, as an image build does): the same
 * behaviour as Node's spawn, and Node's spawn again once the spawner is gone.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Spawner } from '../../src/agent/spawner.js';
import type { BangerError } from '../../src/errors/index.js';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { compileSpawner } from '../../src/daemon/services/image/spawner.js';
import { runCommand } from '../../src/shared/command.js';
import { readAll, startAgent, type AgentHarness } from '../helpers/agent-harness.js';

let dir: string;
let spawner: Spawner | null = null;
let h: AgentHarness;
let c: AgentClient;
const logs: string[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-spawner-test-'));
  const bin = join(dir, 'banger-spawner');
  const built = await compileSpawner(bin, runCommand);
  assert.ok(built.ok, `the spawner does not compile: ${built.ok ? '' : built.reason}`);
  spawner = await Spawner.start(bin, join(dir, 's.sock'), (l) => logs.push(l));
  assert.ok(spawner, 'the spawner did not start');
  h = await startAgent({ spawner: () => spawner });
  c = await h.client();
  await c.hello();
});
after(async () => {
  spawner?.stop();
  await h?.close();
  await rm(dir, { recursive: true, force: true });
});

/** The pid of whoever starts commands: the spawner, or this process (Node's spawn). */
async function starter(): Promise<number> {
  const p = await c.exec({ argv: ['sh', '-c', 'echo $PPID'] });
  return Number((await readAll(p.stdout)).toString().trim());
}

test('a command starts in the spawner, with stdout, stderr and the exit code kept apart', async () => {
  assert.notEqual(await starter(), process.pid, 'started by the test process, not the spawner');
  const p = await c.exec({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 7'] });
  const [out, err, status] = await Promise.all([readAll(p.stdout), readAll(p.stderr), p.exited]);
  assert.equal(out.toString(), 'out\n');
  assert.equal(err.toString(), 'err\n');
  assert.deepEqual(status, { code: 7, signal: null });
});

test('env, cwd and the PATH lookup of the given env', async () => {
  const p = await c.exec({ shell: 'echo "$GREETING" && pwd', env: { GREETING: 'hi there' }, cwd: dir });
  assert.equal((await readAll(p.stdout)).toString(), `hi there\n${dir}\n`);
  assert.equal((await p.exited).code, 0);
  writeFileSync(join(dir, 'only-here'), '#!/bin/sh\necho found\n');
  chmodSync(join(dir, 'only-here'), 0o755);
  const q = await c.exec({ argv: ['only-here'], env: { PATH: dir } });
  assert.equal((await readAll(q.stdout)).toString(), 'found\n');
});

test('stdin is streamed: 10 MiB through cat comes back intact; no stdin reads end-of-file', async () => {
  const data = randomBytes(10 * 1024 * 1024);
  const p = await c.exec({ argv: ['cat'], stdin: true });
  const back = readAll(p.stdout);
  p.stdin!.end(data);
  const got = await back;
  assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(data).digest('hex'));
  assert.equal((await p.exited).code, 0);
  const q = await c.exec({ argv: ['wc', '-c'] });
  assert.equal((await readAll(q.stdout)).toString().trim(), '0');
});

test('signals reach the process group and the exit reports them', async () => {
  const p = await c.exec({ shell: 'sleep 30; echo not reached' });
  await new Promise((r) => setTimeout(r, 100));
  p.kill('SIGTERM');
  assert.deepEqual(await p.exited, { code: null, signal: 'SIGTERM' });
  assert.equal((await readAll(p.stdout)).toString(), '');
});

test('the command gets default signal handling: nothing ignored or blocked (SIGPIPE kills)', async () => {
  const p = await c.exec({ argv: ['grep', '-E', '^Sig(Ign|Blk)', '/proc/self/status'] });
  assert.match((await readAll(p.stdout)).toString(), /^SigBlk:\s+0+\nSigIgn:\s+0+\n$/);
});

test('100 concurrent execs each get their own output', async () => {
  const runs = await Promise.all(
    Array.from({ length: 100 }, async (_, i) => {
      const p = await c.exec({ argv: ['sh', '-c', `echo ${i}; exit ${i % 50}`] });
      const [out, st] = await Promise.all([readAll(p.stdout), p.exited]);
      return { i, out: out.toString(), code: st.code };
    }),
  );
  for (const r of runs) assert.deepEqual(r, { i: r.i, out: `${r.i}\n`, code: r.i % 50 });
});

test('a missing command or directory is NotFound, a non-executable file FailedPrecondition', async () => {
  await assert.rejects(c.exec({ argv: ['/no/such/tool'] }), (e: BangerError) => e.code === 'NotFound' && /\/no\/such\/tool/.test(e.message));
  await assert.rejects(c.exec({ argv: ['true'], cwd: '/no/such/dir' }), (e: BangerError) => e.code === 'NotFound' && /\/no\/such\/dir/.test(e.message));
  writeFileSync(join(dir, 'plain'), 'not a program');
  await assert.rejects(c.exec({ argv: [join(dir, 'plain')] }), (e: BangerError) => e.code === 'FailedPrecondition');
  // The spawner is still there for the next command.
  assert.notEqual(await starter(), process.pid);
});

test('once the spawner is gone, commands start with Node', async () => {
  spawner!.stop();
  for (let i = 0; i < 100 && spawner!.available; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(spawner!.available, false);
  assert.equal(await starter(), process.pid);
  assert.ok(logs.some((l) => /spawner exited/.test(l)), logs.join('\n'));
});
