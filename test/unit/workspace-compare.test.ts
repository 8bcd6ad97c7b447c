/**
 * `workspace compare`: per VM the changed files and line counts from its export, a check's exit code,
 * time-out and output tail (with a local shell standing in for the guest), an error row for a VM that cannot
 * be compared while the others still are, and the table a person reads.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { CHECK_TAIL_BYTES, compareWorkspaces, type CompareDeps } from '../../src/daemon/services/workspace/compare.js';
import type { WorkspaceExportResult } from '../../src/protocol/workspace.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import { compareLines } from '../../src/cli/commands/vm/workspace.js';
import { LocalShellSession } from '../helpers/local-session.js';
import { scratchDir } from '../helpers/scratch.js';

const dir = scratchDir('banger-compare-');

function deps(exports: Record<string, WorkspaceExportResult | Error>, bases: Record<string, string>): CompareDeps {
  return {
    running: async (name) => {
      const e = exports[name];
      if (e === undefined) throw new BangerError(ErrorCode.NotFound, `no VM named '${name}'`);
      return { name, workspace: { guestPath: dir, baseCommit: bases[name] } } as unknown as VmRecord;
    },
    export: async ({ name }) => {
      const e = exports[name]!;
      if (e instanceof Error) throw e;
      return e;
    },
    session: async () => new LocalShellSession(),
  };
}

const ex = (files: WorkspaceExportResult['files'], patch = 'diff'): WorkspaceExportResult => ({
  guestPath: dir,
  patch: Buffer.from(patch).toString('base64'),
  files,
});

test('files and line counts per VM, a check in each, and an error row that does not stop the others', async () => {
  const d = deps(
    {
      'try-1': ex([
        { status: 'M', path: 'a.ts', linesAdded: 10, linesRemoved: 2, binary: false },
        { status: 'A', path: 'logo.png', linesAdded: 0, linesRemoved: 0, binary: true },
      ]),
      'try-2': ex([]),
      'try-3': new BangerError(ErrorCode.FailedPrecondition, "VM 'try-3' has no workspace"),
    },
    { 'try-1': 'b1', 'try-2': 'b1', 'try-3': 'b1' },
  );
  const check = 'if [ -n "$(ls)" ]; then echo checked in $(basename "$PWD"); fi; exit 3';
  const r = await compareWorkspaces(d, { names: ['try-1', 'try-2', 'try-3', 'nope'], check });
  assert.deepEqual(
    r.vms.map((v) => [v.vm, v.files.length, v.linesAdded, v.linesRemoved, v.check?.code ?? null, v.error ?? null]),
    [
      ['try-1', 2, 10, 2, 3, null],
      ['try-2', 0, 0, 0, 3, null],
      ['try-3', 0, 0, 0, null, "VM 'try-3' has no workspace"],
      ['nope', 0, 0, 0, null, "no VM named 'nope'"],
    ],
  );
  assert.equal(r.vms[0]!.patchBytes, 4);
  assert.equal(r.vms[0]!.check!.timedOut, false);
  assert.equal(r.sameBase, false, 'VMs without a workspace have no base');

  const lines = compareLines(r, true);
  assert.match(lines[0]!, /^VM\s+FILES\s+ADDED\s+REMOVED\s+CHECK$/);
  assert.match(lines[1]!, /^try-1\s+2\s+\+10\s+-2\s+exit 3 \(\d+(\.\d)? s\)$/);
  assert.match(lines[3]!, /^try-3\s+-\s+-\s+-\s+-\s+error: VM 'try-3' has no workspace$/);
  assert.ok(lines.includes('  M  +10 -2  a.ts'));
  assert.ok(lines.includes('  A  binary  logo.png'));
});

test('a check that runs past its deadline is stopped and reported as timed out, with the end of its output', async () => {
  const d = deps({ a: ex([]), b: ex([]) }, { a: 'same', b: 'same' });
  const started = Date.now();
  const r = await compareWorkspaces(d, {
    names: ['a', 'b'],
    check: `head -c ${CHECK_TAIL_BYTES * 3} /dev/zero | tr '\\0' x; echo; echo the-end; sleep 30`,
    checkTimeoutSeconds: 1,
  });
  assert.ok(Date.now() - started < 10_000, 'both checks ran at once and were stopped at their deadline');
  for (const v of r.vms) {
    assert.equal(v.check?.timedOut, true);
    assert.equal(v.check?.code, null);
    assert.ok(v.check!.outputTail.length <= CHECK_TAIL_BYTES, 'only the tail is kept');
    assert.match(v.check!.outputTail, /x+\nthe-end\n$/);
  }
  assert.equal(r.sameBase, true);
  assert.match(compareLines(r, false)[1]!, /timed out \(\d/);
});

test('a name given twice is compared once; guest-written names and paths are escaped in the table', async () => {
  const d = deps({ 'x\x1b[2K': ex([{ status: 'M', path: 'evil\x1b[1A.txt', linesAdded: 1, linesRemoved: 0, binary: false }]) }, {});
  const r = await compareWorkspaces(d, { names: ['x\x1b[2K', 'x\x1b[2K'] });
  assert.equal(r.vms.length, 1);
  const text = compareLines(r, true).join('\n');
  assert.ok(!text.includes('\x1b'), text);
});
