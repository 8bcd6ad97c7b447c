/**
 * The CLI's progress display without a terminal (plain lines on stderr): steps of one operation, and steps of
 * several things at once (a fork's VMs), which interleave and are told apart by their subject.
 */
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { ProgressRenderer } from '../../src/cli/output.js';
import type { ProgressEvent } from '../../src/protocol/common.js';

/** What the renderer writes to stderr for `events`, with Date.now() moved on by each event's `after` ms. */
async function render(events: (ProgressEvent & { after?: number })[]): Promise<string[]> {
  const r = await ProgressRenderer.create('plain');
  const lines: string[] = [];
  const write = process.stderr.write;
  mock.timers.enable({ apis: ['Date'], now: 0 });
  process.stderr.write = ((chunk: string) => lines.push(...chunk.split('\n').filter(Boolean)) > 0) as typeof process.stderr.write;
  try {
    for (const { after, ...ev } of events) {
      if (after) mock.timers.tick(after);
      r.onEvent(ev);
    }
    r.finish(true);
  } finally {
    process.stderr.write = write;
    mock.timers.reset();
  }
  return lines;
}

test('plain progress: one line per step, and the time of a step that took a second or more', async () => {
  assert.deepEqual(
    await render([
      { kind: 'step', step: 'launch', index: 1, total: 2, detail: 'qemu, tcg' },
      { kind: 'step', step: 'wait for the guest', index: 2, total: 2, after: 300 },
      { kind: 'notice', message: 'KVM is not usable here', after: 1000 },
      { kind: 'step', step: 'unused', index: 2, total: 2, after: 1500, subject: undefined },
    ]),
    ['==> [1/2] launch: qemu, tcg', '==> [2/2] wait for the guest', 'note: KVM is not usable here', '    took 2.5 s', '==> [2/2] unused'],
  );
});

test("plain progress of a fork: each VM's steps carry its name, and each step's time is its own VM's", async () => {
  assert.deepEqual(
    await render([
      { kind: 'step', step: 'snapshot', index: 1, total: 1, detail: 'src' },
      { kind: 'step', step: 'launch', index: 1, total: 2, subject: 'f-1', after: 1100 },
      { kind: 'step', step: 'launch', index: 1, total: 2, subject: 'f-2' },
      { kind: 'step', step: 'new identity', index: 2, total: 2, subject: 'f-2', after: 1200 },
      { kind: 'step', step: 'new identity', index: 2, total: 2, subject: 'f-1', after: 100 },
      { kind: 'notice', message: 'done', after: 2000 },
    ]),
    [
      '==> [1/1] snapshot: src',
      '    took 1.1 s',
      '==> f-1 [1/2] launch',
      '==> f-2 [1/2] launch',
      '    f-2: took 1.2 s',
      '==> f-2 [2/2] new identity',
      '    f-1: took 1.3 s',
      '==> f-1 [2/2] new identity',
      'note: done',
      // At the end, each VM's last step.
      '    f-2: took 2.1 s',
      '    f-1: took 2.0 s',
    ],
  );
});

test('plain progress of a transfer: bytes, and files counted in the singular for one', async () => {
  const lines = await render([
    { kind: 'bytes', step: 'import', done: 8, total: 8, files: 1 },
    { kind: 'bytes', step: 'import', done: 2048, total: 2048, files: 2, after: 10 },
  ]);
  assert.deepEqual(lines.map((l) => l.replace(/, [^,]*\/s.*$/, '')), ['    import: 8 B / 8 B, 1 file', '    import: 2.0 KiB / 2.0 KiB, 2 files']);
});
