/**
 * The spine and workspace e2e suites a second time, as a normal user this test creates (with subordinate
 * ids, not in sudoers): the user's own daemon under ~/.local/share/banger, its own loopback range, and a
 * rootless build of the default image (spine's first step, in a state directory that has none). The nested
 * run's output is streamed into this test's log; it must exit 0 with every one of its tests passed.
 * Needs root (to create the user); the user must be able to read the checkout (CLI, tests, node_modules).
 * Cost: one rootless image build (2-4 min) plus both suites under TCG: 5.5 min on a quiet host here, more when loaded.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, REPO_ROOT } from '../helpers/cli.js';
import { daemonLogTail, daemonThreads } from '../helpers/diagnostics.js';
import { bangerAs, cannotRunAsTestUser, createTestUser, removeTestUser, runAs, userBangerHome, userHome } from '../helpers/test-user.js';

const USER = `bgr-e2e-${process.pid % 1000}`;
const SUITES = ['test/e2e/spine.test.ts', 'test/e2e/workspace.test.ts'];
const TAP = join(userHome(USER), 'nested.tap');

/** The counts of a TAP stream's closing summary (`# pass 12` ...); missing lines are absent keys. */
function tapSummary(tap: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of tap.matchAll(/^# (tests|suites|pass|fail|cancelled|skipped|todo) (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

/** The names of a TAP stream's tests that did not pass (`not ok N - name`), cancelled ones included. */
function tapNotOk(tap: string): string[] {
  return [...tap.matchAll(/^\s*not ok \d+ - (.*)$/gm)].map((m) => m[1]!);
}

/** Writes a child's output to stderr line by line, each line prefixed, so CI logs show the nested run. */
function prefixed(prefix: string): (stream: 'stdout' | 'stderr', chunk: string) => void {
  const rest = { stdout: '', stderr: '' };
  return (stream, chunk) => {
    const lines = (rest[stream] + chunk).split('\n');
    rest[stream] = lines.pop()!;
    if (lines.length) process.stderr.write(lines.map((l) => `${prefix}${l}\n`).join(''));
  };
}

const skip = cannotRunAsTestUser([CLI, join(REPO_ROOT, 'dist', 'bangerd.js'), join(REPO_ROOT, 'node_modules', 'tsx', 'package.json'), ...SUITES.map((s) => join(REPO_ROOT, s))]);

void describe('the spine and workspace e2e suites as a normal user', { skip: skip ?? false }, () => {
  before(() => {
    createTestUser(USER);
  });

  after(async () => {
    await removeTestUser(USER);
  });

  // The e2e tier gives a file 30 minutes: the nested run gets 25, so that a hung one still leaves time to say
  // what hung and to remove the user.
  void it('pass in full as a user without root, building the default image rootless', { timeout: 27 * 60_000 }, async () => {
    const home = userBangerHome(USER);
    process.stderr.write(`\n===== ${SUITES.join(' ')} as ${USER} (BANGER_E2E_HOME=${home}) =====\n`);
    const r = await runAs(
      USER,
      [
        process.execPath,
        '--import',
        'tsx',
        '--test',
        '--test-concurrency=1',
        '--test-timeout=1800000',
        '--test-reporter=spec',
        '--test-reporter-destination=stdout',
        '--test-reporter=tap',
        `--test-reporter-destination=${TAP}`,
        ...SUITES,
      ],
      { cwd: REPO_ROOT, env: { BANGER_E2E_HOME: home }, timeoutMs: 25 * 60_000, onOutput: prefixed(`[${USER}] `) },
    );
    process.stderr.write(`===== end of the run as ${USER}: exit ${r.code} =====\n`);
    const tap = existsSync(TAP) ? readFileSync(TAP, 'utf8') : '';
    const sum = tapSummary(tap);
    const passedAll = (sum.pass ?? 0) > 0 && sum.pass === sum.tests && [sum.fail, sum.cancelled, sum.skipped, sum.todo].every((n) => n === 0);
    // What hung or failed, read once and only then (daemonThreads attaches gdb to the user's daemon).
    const why =
      r.code === 0 && passedAll
        ? ''
        : [
            `the run as ${USER} exited ${r.code}; its summary: ${JSON.stringify(sum)}`,
            ...tapNotOk(tap).map((n) => `not passed: ${n}`),
            `the last lines of ${USER}'s daemon log:`,
            daemonLogTail(home, 25),
            daemonThreads(home),
          ].join('\n');
    assert.equal(r.code, 0, why);
    assert.ok((sum.pass ?? 0) > 0, `the run as ${USER} passed no test: ${JSON.stringify(sum)}`);
    assert.deepEqual(
      { fail: sum.fail, cancelled: sum.cancelled, skipped: sum.skipped, todo: sum.todo, passedAll: sum.pass === sum.tests },
      { fail: 0, cancelled: 0, skipped: 0, todo: 0, passedAll: true },
      why,
    );
    // The image the spine used is the user's own, built without root into its state directory.
    const img = await bangerAs(USER, ['image', 'show', 'default', '--json']);
    assert.equal(img.code, 0, img.stderr);
    const shown = JSON.parse(img.stdout) as { status: string; files: { path: string }[] };
    assert.equal(shown.status, 'ready');
    for (const f of shown.files) assert.ok(f.path.startsWith(`${home}/images/`), f.path);
  });
});
