import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/errors/index.js';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { AgentGuestSession } from '../../src/daemon/guest/agent-session.js';
import { nodeSpawner, type Spawner } from '../../src/agent/spawner.js';
import { readAll, startAgent, type AgentHarness } from '../helpers/agent-harness.js';

let h: AgentHarness;
let c: AgentClient;
before(async () => {
  h = await startAgent();
  c = await h.client();
  await c.hello();
});
after(async () => {
  await h.close();
});

test('exec keeps stdout and stderr apart and reports the exit code', async () => {
  const p = await c.exec({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 7'] });
  const [out, err, status] = await Promise.all([readAll(p.stdout), readAll(p.stderr), p.exited]);
  assert.equal(out.toString(), 'out\n');
  assert.equal(err.toString(), 'err\n');
  assert.deepEqual(status, { code: 7, signal: null });
});

test('a shell line runs under /bin/sh with the given env and cwd', async () => {
  const p = await c.exec({ shell: 'echo "$GREETING" && pwd', env: { GREETING: 'hi there' }, cwd: h.dir });
  assert.equal((await readAll(p.stdout)).toString(), `hi there\n${h.dir}\n`);
  assert.equal((await p.exited).code, 0);
});

test('stdin is streamed: 10 MiB through cat comes back intact', async () => {
  const data = randomBytes(10 * 1024 * 1024);
  const p = await c.exec({ argv: ['cat'], stdin: true });
  const back = readAll(p.stdout);
  p.stdin!.end(data);
  const got = await back;
  assert.equal(got.length, data.length);
  assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(data).digest('hex'));
  assert.equal((await p.exited).code, 0);
});

test('a signal is forwarded and the exit reports it', async () => {
  const p = await c.exec({ argv: ['sleep', '30'] });
  p.kill('SIGTERM');
  assert.deepEqual(await p.exited, { code: null, signal: 'SIGTERM' });
});

test('a signal reaches the children of a shell line (the process group)', async () => {
  const p = await c.exec({ shell: 'sleep 30; echo not reached' });
  await new Promise((r) => setTimeout(r, 100));
  p.kill('SIGTERM');
  assert.deepEqual(await p.exited, { code: null, signal: 'SIGTERM' });
  assert.equal((await readAll(p.stdout)).toString(), '');
});

test('100 concurrent execs over one connection each get their own output', async () => {
  const runs = await Promise.all(
    Array.from({ length: 100 }, async (_, i) => {
      const p = await c.exec({ argv: ['sh', '-c', `echo ${i}; exit ${i % 50}`] });
      const [out, st] = await Promise.all([readAll(p.stdout), p.exited]);
      return { i, out: out.toString(), code: st.code };
    }),
  );
  for (const r of runs) assert.deepEqual(r, { i: r.i, out: `${r.i}\n`, code: r.i % 50 });
});

test('a missing command or directory is NotFound with its name', async () => {
  await assert.rejects(
    c.exec({ argv: ['/no/such/tool'] }),
    (e: BangerError) => e.code === 'NotFound' && /\/no\/such\/tool/.test(e.message),
  );
  await assert.rejects(
    c.exec({ argv: ['true'], cwd: '/no/such/dir' }),
    (e: BangerError) => e.code === 'NotFound' && /\/no\/such\/dir/.test(e.message),
  );
});

test(
  'a pty exec sees a terminal of the asked size and follows a resize',
  { skip: !hasPython() && 'python3 is not installed' },
  async () => {
    // No fixed sleeps: under load the terminal may take seconds to exist. Wait for what the program says.
    const p = await c.exec({
      shell: 'test -t 0 && stty size; while read x; do [ "$x" = q ] && exit 0; stty size; done',
      pty: { cols: 100, rows: 30 },
      stdin: true,
    });
    let text = '';
    p.stdout.on('data', (b: Buffer) => (text += b.toString()));
    const until = async (what: RegExp, poke?: () => void) => {
      for (const end = Date.now() + 20_000; !what.test(text);) {
        assert.ok(Date.now() < end, `waited 20 s for ${what} in ${JSON.stringify(text)}`);
        poke?.();
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    await until(/30 100\r\n/);
    assert.match(text, /^30 100\r\n/);
    p.resize(120, 40);
    // The resize and the input travel separately; ask again until the program sees the new size.
    await until(/40 120\r\n/, () => p.stdin!.write('go\n'));
    p.stdin!.write('q\n');
    assert.equal((await p.exited).code, 0);
  },
);

test('a pty exec reports a signal the same way', { skip: !hasPython() && 'python3 is not installed' }, async () => {
  const p = await c.exec({ argv: ['sleep', '30'], pty: { cols: 80, rows: 24 } });
  await new Promise((r) => setTimeout(r, 300));
  p.kill('SIGTERM');
  assert.equal((await p.exited).signal, 'SIGTERM');
});

function hasPython(): boolean {
  try {
    execFileSync('python3', ['-c', 'import pty']);
    return true;
  } catch {
    return false;
  }
}

test('an argv exec runs without a shell in its directory; one that cannot start gets the shell line instead', async () => {
  const session = new AgentGuestSession(c);
  const ok = await session.execArgv(['sh', '-c', 'echo "$PWD"; echo err >&2; exit 4'], h.dir, 'exit 99');
  assert.deepEqual([ok.code, ok.stdout.toString(), ok.stderr.toString()], [4, `${h.dir}\n`, 'err\n']);
  // What SSH would show: the shell's own message and status.
  const missing = await session.execArgv(['no-such-command-here'], h.dir, 'exec no-such-command-here');
  assert.equal(missing.code, 127);
  assert.match(missing.stderr.toString(), /no-such-command-here: not found/);
  const noDir = await session.execArgv(['true'], join(h.dir, 'gone'), `cd ${join(h.dir, 'gone')} && exec true`);
  assert.equal(noDir.code, 2);
  assert.match(noDir.stderr.toString(), /can't cd/);
});

test('output that arrives in the same read as the exit is all collected (the exit does not end the command early)', async () => {
  const stream = (text: string) => {
    const r = new Readable({ read() {} });
    r.push(text);
    r.push(null);
    return r;
  };
  // What the client holds when the agent's reply, the output and the exit came in one read: all of it is
  // already buffered and the exit already settled before anyone reads.
  const proc = {
    pid: 1,
    stdout: stream('out\n'),
    stderr: stream('err\n'),
    stdin: null,
    exited: Promise.resolve({ code: 3, signal: null }),
    kill: () => {},
    resize: () => {},
  };
  const agent = { closed: false, exec: async () => proc } as unknown as AgentClient;
  const r = await new AgentGuestSession(agent).exec('anything');
  assert.deepEqual([r.code, r.stdout.toString(), r.stderr.toString()], [3, 'out\n', 'err\n']);
});

test('a process that starts after its connection went is killed, not left running in the guest', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let asked!: () => void;
  const spawning = new Promise<void>((r) => (asked = r));
  const pids: number[] = [];
  const slow: Spawner = {
    async spawn(req) {
      asked();
      await gate;
      const s = await nodeSpawner.spawn(req);
      pids.push(s.pid);
      return s;
    },
  };
  const agent = await startAgent({ spawner: slow });
  try {
    const client = await agent.client();
    await client.hello();
    void client.exec({ argv: ['sleep', '60'] }).catch(() => {});
    await spawning;
    client.close();
    await new Promise((r) => setTimeout(r, 100)); // the agent sees the connection end
    release();
    for (let i = 0; i < 50 && pids.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(pids.length, 1, 'the process was started');
    const gone = async () => {
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pids[0]!, 0);
        } catch {
          return true;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      return false;
    };
    assert.equal(await gone(), true, 'sleep 60 was killed');
  } finally {
    await agent.close();
  }
});
