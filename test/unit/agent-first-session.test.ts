import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { test } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { AgentFirstSession, AgentGuestSession } from '../../src/daemon/guest/agent-session.js';
import type { GuestExecOptions, GuestSession } from '../../src/daemon/guest/session.js';

/** An SSH session stand-in that echoes its stdin as stdout and records the commands it ran. */
function fakeSsh() {
  const ran: string[] = [];
  const session: GuestSession & { isClosed: boolean } = {
    isClosed: false,
    async exec(command: string, opts: GuestExecOptions = {}) {
      ran.push(command);
      const stdin = opts.stdin ? await text(opts.stdin) : '';
      return { code: 0, stdout: Buffer.from(`ssh:${stdin}`), stderr: Buffer.alloc(0) };
    },
  };
  return { session, ran };
}

/** An agent whose exec requests fail with `err` before any process starts. */
function failingAgent(err: Error): AgentClient {
  return { closed: false, exec: async () => Promise.reject(err) } as unknown as AgentClient;
}

/** An agent whose process starts, writes `out`, then ends as `exited` says. */
function runningAgent(out: string, exited: Promise<{ code: number | null; signal: string | null }>): AgentClient {
  const stream = (s: string) => Readable.from(s ? [Buffer.from(s)] : []);
  const proc = { pid: 7, stdout: stream(out), stderr: stream(''), stdin: null, exited, kill: () => {}, resize: () => {} };
  return { closed: false, exec: async () => proc } as unknown as AgentClient;
}

test('an agent that fails before the command starts hands it to SSH, stdin untouched', async () => {
  const ssh = fakeSsh();
  const fallbacks: string[] = [];
  const s = new AgentFirstSession(
    new AgentGuestSession(failingAgent(new BangerError(ErrorCode.Unavailable, 'agent connection closed'))),
    async () => ssh.session,
    (e) => fallbacks.push(e.message),
  );
  const r = await s.exec('tar -x', { stdin: Readable.from([Buffer.from('the whole archive')]) });
  assert.equal(r.stdout.toString(), 'ssh:the whole archive');
  assert.deepEqual(ssh.ran, ['tar -x']);
  assert.deepEqual(fallbacks, ['agent connection closed']);
  ssh.session.isClosed = true;
  assert.equal(s.isClosed, true, 'isClosed follows the channel that ran the command');
});

test('other agent errors are the caller\'s, and SSH is not asked', async () => {
  const ssh = fakeSsh();
  const s = new AgentFirstSession(
    new AgentGuestSession(failingAgent(new BangerError(ErrorCode.InvalidArgument, 'bad request'))),
    async () => ssh.session,
    () => assert.fail('no fallback'),
  );
  await assert.rejects(s.exec('true'), (e: BangerError) => e.code === ErrorCode.InvalidArgument);
  assert.deepEqual(ssh.ran, []);
});

test('a command that started over the agent is never run again over SSH', async () => {
  const ssh = fakeSsh();
  const s = new AgentFirstSession(
    new AgentGuestSession(runningAgent('partial', Promise.reject(new BangerError(ErrorCode.Unavailable, 'agent gone')))),
    async () => ssh.session,
    () => assert.fail('no fallback'),
  );
  await assert.rejects(s.exec('import'), (e: BangerError) => e.code === ErrorCode.Unavailable);
  assert.deepEqual(ssh.ran, []);
});

test('a working agent runs the command; its output and status come back', async () => {
  const ssh = fakeSsh();
  const agent = runningAgent('over the agent\n', Promise.resolve({ code: 3, signal: null }));
  const s = new AgentFirstSession(new AgentGuestSession(agent), async () => ssh.session, () => assert.fail('no fallback'));
  const r = await s.exec('anything');
  assert.deepEqual([r.code, r.stdout.toString()], [3, 'over the agent\n']);
  assert.equal(s.isClosed, false);
  assert.deepEqual(ssh.ran, []);
});
