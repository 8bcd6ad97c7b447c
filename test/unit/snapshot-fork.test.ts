/**
 * `vm fork` as one operation (services/snapshot/fork.ts), over stand-ins of the snapshot and VM services:
 * names checked before anything is made, all or nothing, each copy's progress labelled with its name. The
 * real-VM proof is e2e/snapshot.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCode, isBangerError } from '../../src/errors/index.js';
import type { ProgressEvent } from '../../src/protocol/common.js';
import type { SnapshotInfo } from '../../src/protocol/snapshot.js';
import type { VmInfo } from '../../src/protocol/vm.js';
import { forkVm, type ForkDeps } from '../../src/daemon/services/snapshot/fork.js';
import type { RestoreSource } from '../../src/daemon/services/snapshot/restore.js';

/** Stand-ins that record what was done; `failStart` names a copy whose start fails. */
function fakes(existing: string[], failStart?: string) {
  const vms = new Set(existing);
  const log: string[] = [];
  const snap = { id: 'snap1', name: 'made' } as SnapshotInfo;
  const deps: ForkDeps = {
    stamp: () => 'x',
    snapshots: {
      create: async (p) => (log.push(`snapshot ${p.vm} as ${p.name}`), snap),
      source: async () => ({}) as RestoreSource,
      show: async () => snap,
      dropForkMemory: async (id) => void log.push(`drop memory of ${id}`),
    },
    vms: {
      nameTaken: (n) => vms.has(n),
      create: async ({ name }, progress) => {
        vms.add(name);
        progress({ kind: 'step', step: 'write seed', index: 1, total: 2 });
        return { name } as VmInfo;
      },
      start: async (name, progress) => {
        // The failing copy fails after the others have been made.
        await new Promise((r) => setTimeout(r, name === failStart ? 20 : 0));
        if (name === failStart) throw new Error(`${name} did not resume`);
        progress({ kind: 'step', step: 'new identity', index: 2, total: 2 });
        return { name, state: 'running' } as VmInfo;
      },
      delete: async (name) => (vms.delete(name), log.push(`delete ${name}`)),
    },
  };
  return { deps, vms, log };
}

test('fork: a snapshot, then N copies named PREFIX-1..N, each step labelled with its copy', async () => {
  const { deps, vms, log } = fakes(['src']);
  const events: ProgressEvent[] = [];
  const r = await forkVm(deps, { vm: 'src', count: 2, name: 'try' }, (e) => events.push(e));
  assert.deepEqual(r.vms.map((v) => v.name), ['try-1', 'try-2']);
  assert.deepEqual(log, ['snapshot src as try-x', 'drop memory of snap1'], 'the copies run: its memory goes');
  assert.deepEqual([...vms].sort(), ['src', 'try-1', 'try-2']);
  assert.deepEqual(events[0], { kind: 'step', step: 'snapshot', index: 1, total: 1, detail: 'src' });
  const labelled = events.slice(1).map((e) => (e.kind === 'step' ? `${e.subject} ${e.step}` : e.kind)).sort();
  assert.deepEqual(labelled, ['try-1 new identity', 'try-1 write seed', 'try-2 new identity', 'try-2 write seed']);
});

test('fork: a name in use is refused (66) before any snapshot or VM is made, naming it', async () => {
  const { deps, vms, log } = fakes(['src', 'try-2']);
  await assert.rejects(forkVm(deps, { vm: 'src', count: 3, name: 'try' }, () => {}), (e: unknown) => {
    assert.ok(isBangerError(e) && e.code === ErrorCode.AlreadyExists);
    assert.match((e as Error).message, /'try-2' already exists/);
    return true;
  });
  assert.deepEqual(log, []);
  assert.deepEqual([...vms].sort(), ['src', 'try-2']);
});

test('fork: one copy that fails takes the copies this fork made with it, so the same command can run again', async () => {
  const { deps, vms, log } = fakes(['src'], 'try-2');
  await assert.rejects(forkVm(deps, { vm: 'src', count: 3, name: 'try' }, () => {}), /try-2 did not resume/);
  assert.deepEqual([...vms].sort(), ['src']);
  assert.deepEqual(log.slice(1, -1).sort(), ['delete try-1', 'delete try-2', 'delete try-3']);
  assert.equal(log.at(-1), 'drop memory of snap1', 'after the copies went');
});

test('fork: a bad prefix is refused before anything is made', async () => {
  const { deps, log } = fakes(['src']);
  await assert.rejects(forkVm(deps, { vm: 'src', count: 2, name: 'Bad Name' }, () => {}), (e: unknown) => isBangerError(e) && e.code === ErrorCode.InvalidArgument);
  assert.deepEqual(log, []);
});
