/**
 * Prespawned processes: started by one connection, held by the agent, taken by an exec on another (as a VM
 * restored from a snapshot takes the identity program its source's agent held).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { readAll, startAgent, type AgentHarness } from '../helpers/agent-harness.js';

let h: AgentHarness;
before(async () => {
  h = await startAgent();
});
after(async () => {
  await h.close();
});

const READY_THEN_ECHO = ['sh', '-c', 'echo ready; read line; echo "got $line"; exit 3'];

test('a process prespawned on one connection is taken by an exec on the next: its first output, stdin, exit', async () => {
  const first = await h.client();
  const { pid } = await first.prespawn('echo', READY_THEN_ECHO);
  assert.ok(pid > 0);
  first.close();
  const second = await h.client();
  const p = await second.exec({ prespawned: 'echo', stdin: true });
  assert.equal(p.pid, pid, 'the same process');
  p.stdin!.end('hello\n');
  assert.equal((await readAll(p.stdout)).toString(), 'ready\ngot hello\n', 'what it wrote before it was taken comes first');
  assert.equal((await p.exited).code, 3);
  second.close();
});

test('a process is taken once: the next exec of its key is NotFound, as is an unknown key', async () => {
  const c = await h.client();
  await c.prespawn('once', READY_THEN_ECHO);
  const p = await c.exec({ prespawned: 'once' });
  assert.equal((await readAll(p.stdout)).toString(), 'ready\ngot \n', 'without stdin it reads end of file at once');
  await p.exited;
  for (const key of ['once', 'never'])
    await assert.rejects(c.exec({ prespawned: key }), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.NotFound);
  c.close();
});

test('prespawning the same command again keeps the process held; another command replaces it', async () => {
  const c = await h.client();
  const a = await c.prespawn('again', READY_THEN_ECHO);
  const b = await c.prespawn('again', READY_THEN_ECHO);
  assert.equal(b.pid, a.pid, 'kept');
  const other = await c.prespawn('again', ['sh', '-c', 'echo other; cat >/dev/null']);
  assert.notEqual(other.pid, a.pid);
  const gone = async () => {
    for (let i = 0; i < 40; i++) {
      try {
        process.kill(a.pid, 0);
      } catch {
        return true;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  };
  assert.ok(await gone(), 'the replaced one is killed');
  const p = await c.exec({ prespawned: 'again' });
  assert.equal((await readAll(p.stdout)).toString(), 'other\n');
  c.close();
});

test('a held process that ended before it was taken is NotFound; a command that is not there fails the prespawn', async () => {
  const c = await h.client();
  await c.prespawn('gone', ['sh', '-c', 'exit 0']);
  await new Promise((r) => setTimeout(r, 200));
  await assert.rejects(c.exec({ prespawned: 'gone' }), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.NotFound);
  await assert.rejects(c.prespawn('missing', ['/no/such/program']), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.NotFound);
  await assert.rejects(c.prespawn('Bad Key', ['true']), (e: unknown) => e instanceof BangerError && e.code === ErrorCode.InvalidArgument);
  c.close();
});
