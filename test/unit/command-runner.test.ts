import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runCommand, shellStatus } from '../../src/shared/command.js';
import { headCommitOf } from '../../src/shared/workspace-files.js';
import { BangerError } from '../../src/errors/index.js';

const isCode = (code: string, message?: RegExp) => (e: unknown) =>
  e instanceof BangerError && e.code === code && (message === undefined || message.test(e.message));

void describe('the one command runner', () => {
  void it('reports death by signal N as 128+N, like a shell', async () => {
    const term = await runCommand('sh', ['-c', 'kill -TERM $$'], { allowFailure: true });
    assert.equal(term.code, 143);
    const kill = await runCommand('sh', ['-c', 'kill -KILL $$'], { allowFailure: true });
    assert.equal(kill.code, 137);
    await assert.rejects(runCommand('sh', ['-c', 'kill -TERM $$']), isCode('Internal', /exit 143/));
  });

  void it('gives guest exits (agent and SSH) the same status rule as host commands', () => {
    // One function for every channel: a code as it is, a known signal 128+N, an unknown one as a hang-up.
    assert.deepEqual(
      [
        shellStatus(0, null),
        shellStatus(7, null),
        shellStatus(null, 'SIGINT'),
        shellStatus(null, 'SIGNOPE'),
        shellStatus(null, null),
      ],
      [0, 7, 130, 129, 1],
    );
  });

  void it('passes exit codes, stdin and output through', async () => {
    const r = await runCommand('sh', ['-c', 'cat; echo err >&2; exit 3'], { input: 'in\n', allowFailure: true });
    assert.deepEqual([r.code, r.stdout, r.stderr, r.truncated], [3, 'in\n', 'err\n', undefined]);
  });

  void it('says a missing command is not installed', async () => {
    await assert.rejects(
      runCommand('banger-no-such-command', []),
      isCode('FailedPrecondition', /^banger-no-such-command is not installed$/),
    );
  });

  void it('is Cancelled when aborted', async () => {
    const ac = new AbortController();
    const p = runCommand('sleep', ['30'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(p, isCode('Cancelled'));
  });

  void it('keeps only the tail of output over the cap, and says so', async () => {
    // 3 MiB of 'a' then a last line: with a 1 MiB cap the tail (and the last line) are kept.
    const r = await runCommand('sh', ['-c', 'head -c 3145728 /dev/zero | tr "\\0" a; echo; echo last-line'], {
      maxOutputBytes: 1 << 20,
    });
    assert.equal(r.stdout.length, 1 << 20);
    assert.ok(r.stdout.endsWith('a\nlast-line\n'));
    assert.deepEqual(r.truncated, { stdout: true, stderr: false });
  });

  void it('gives the CLI helpers the same answers (no commits -> null, not a crash)', async () => {
    assert.equal(await headCommitOf('/', runCommand), null);
  });
});
