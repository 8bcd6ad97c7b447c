/** `banger vm session` and `banger vm stats`: flag parsing, send's newline rule, and the human tables. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from 'commander';
import {
  collectEnv,
  exitCodeOf,
  parseFrom,
  parseSignal,
  sendPayload,
  sessionsTable,
  sessionState,
  statsFailureLines,
  statsTable,
} from '../../src/cli/commands/vm/session-format.js';
import type { SessionInfo, VmStats } from '../../src/protocol/session.js';

const session = (over: Partial<SessionInfo> = {}): SessionInfo => ({
  name: 'agent',
  pid: 42,
  state: 'running',
  exitCode: null,
  signal: null,
  argv: ['pi', '--mode', 'rpc'],
  tty: false,
  cwd: null,
  startedAt: '2026-01-01T00:00:00Z',
  endedAt: null,
  stdoutBytes: 1024,
  stderrBytes: 1024,
  capBytes: 1 << 30,
  capped: false,
  attachedBy: null,
  ...over,
});

const stats = (over: Partial<VmStats> = {}): VmStats => ({
  name: 'dev',
  cpuPercent: 12.345,
  vcpus: 2,
  memory: { totalBytes: 2 * 2 ** 30, usedBytes: 512 << 20, availableBytes: 1536 << 20 },
  load: [0.5, 0.25, 0.125],
  disks: [
    { mount: '/', usedBytes: 1 << 30, freeBytes: 3 * 2 ** 30, totalBytes: 4 * 2 ** 30 },
    { mount: '/root', usedBytes: 10 << 20, freeBytes: 8 * 2 ** 30, totalBytes: 9 * 2 ** 30 },
  ],
  network: { rxBytes: 2048, txBytes: 100 },
  uptimeSeconds: 3725,
  sessions: { running: 1, total: 3 },
  ...over,
});

void describe('vm session flags', () => {
  void it('--from takes start, end or a byte offset, and refuses anything else', () => {
    assert.equal(parseFrom('start'), 'start');
    assert.equal(parseFrom('end'), 'end');
    assert.equal(parseFrom('0'), 0);
    assert.equal(parseFrom('4096'), 4096);
    for (const bad of ['-1', '1.5', 'beginning', '', '0x10', '99999999999999999999'])
      assert.throws(() => parseFrom(bad), InvalidArgumentError, bad);
  });

  void it('--env collects NAME=VALUE pairs, keeps = in values, and refuses a bad name', () => {
    let env = collectEnv('A=1');
    env = collectEnv('URL=http://x/?a=b', env);
    env = collectEnv('A=2', env);
    env = collectEnv('EMPTY=', env);
    assert.deepEqual(env, { A: '2', URL: 'http://x/?a=b', EMPTY: '' });
    for (const bad of ['NOVALUE', '=x', '1A=x', 'A-B=x']) assert.throws(() => collectEnv(bad), InvalidArgumentError, bad);
  });

  void it('--signal accepts TERM, sigkill, SIGHUP and numbers as SIGNAME', () => {
    assert.equal(parseSignal('TERM'), 'SIGTERM');
    assert.equal(parseSignal('sigkill'), 'SIGKILL');
    assert.equal(parseSignal('SIGHUP'), 'SIGHUP');
    assert.equal(parseSignal('9'), 'SIGKILL');
    for (const bad of ['NOPE', '999', 'SIG']) assert.throws(() => parseSignal(bad), InvalidArgumentError, bad);
  });

  void it('send writes TEXT and a newline, no newline with -n, and stdin as is for - or no TEXT', () => {
    assert.deepEqual(sendPayload('{"type":"prompt"}', false), { stdin: false, data: '{"type":"prompt"}\n' });
    assert.deepEqual(sendPayload('y', true), { stdin: false, data: 'y' });
    assert.deepEqual(sendPayload('', false), { stdin: false, data: '\n' });
    assert.deepEqual(sendPayload('-', false), { stdin: true });
    assert.deepEqual(sendPayload(undefined, true), { stdin: true });
  });
});

void describe('vm session list and exit codes', () => {
  void it('shows running, exited N, killed SIG and ended: vm stopped', () => {
    assert.equal(sessionState(session()), 'running');
    assert.equal(sessionState(session({ state: 'exited', exitCode: 3, pid: null })), 'exited 3');
    assert.equal(sessionState(session({ state: 'exited', signal: 'SIGKILL', pid: null })), 'killed SIGKILL');
    assert.equal(sessionState(session({ state: 'ended', pid: null })), 'ended: vm stopped');
  });

  void it('escapes what the guest reports (name, argv) in the table', () => {
    const t = sessionsTable([session({ argv: ['sh', '-c', 'printf "\x1b]0;pwned\x07"'], capped: true })]);
    assert.ok(!t.includes('\x1b') && !t.includes('\x07'), t);
    assert.match(t, /\\e\]0;pwned\\x07/);
    assert.match(t, /^NAME\s+PID\s+STATE\s+OUTPUT/);
    assert.match(t, /agent\s+42\s+running\s+2\.0 KiB \(capped\)/);
  });

  void it("an attach that saw the session end exits with its code, or 128+N after signal N", () => {
    assert.equal(exitCodeOf(session({ state: 'exited', exitCode: 0 })), 0);
    assert.equal(exitCodeOf(session({ state: 'exited', exitCode: 7 })), 7);
    assert.equal(exitCodeOf(session({ state: 'exited', signal: 'SIGTERM' })), 143);
    assert.equal(exitCodeOf(session({ state: 'ended' })), undefined);
  });
});

void describe('vm stats table', () => {
  void it('shows one line per VM with CPU, memory, load, root and work disks, network, uptime, sessions', () => {
    const lines = statsTable([stats(), stats({ name: 'other', disks: [] })]).split('\n');
    assert.match(lines[0]!, /^NAME\s+CPU %\s+MEM USED \/ AVAIL\s+LOAD\s+ROOT USED \/ FREE\s+WORK USED \/ FREE\s+NET RX \/ TX\s+UPTIME\s+SESSIONS$/);
    assert.match(lines[1]!, /^dev\s+12\.3\s+512\.0 MiB \/ 1\.5 GiB\s+0\.50 0\.25 0\.13\s+1\.0 GiB \/ 3\.0 GiB\s+10\.0 MiB \/ 8\.0 GiB\s+2\.0 KiB \/ 100 B\s+1h2m\s+1 \/ 3$/);
    assert.match(lines[2]!, /^other\s+12\.3\s+.*\s+-\s+-\s+/, 'missing disks show as -');
  });

  void it('escapes guest-reported strings and lists a failed VM with dashes and its reason apart', () => {
    const rows = [stats({ name: 'evil\x1b[2J' }), { name: 'broken', error: 'agent said \x1b[31mno\x1b[0m' }];
    const t = statsTable(rows);
    assert.ok(!t.includes('\x1b'), t);
    assert.match(t, /evil\\e\[2J/);
    assert.match(t.split('\n')[2]!, /^broken(\s+-){8}$/);
    assert.deepEqual(statsFailureLines(rows), ['broken: agent said \\e[31mno\\e[0m']);
  });
});
