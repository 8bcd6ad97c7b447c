/**
 * Crash safety at a small count (bench/chaos.ts and bench/cycles.ts run the full counts by hand):
 * kill -9 of bangerd at random points of every VM operation leaves no leaked QEMU process or directory,
 * no VM stuck mid-transition, every running VM usable and state.db intact; stop/start cycles of one VM
 * all succeed without the daemon gaining open files.
 * BANGER_CHAOS_SEED repeats a run's random choices (the seed is printed).
 */
import { after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { E2E_HOME, banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { CHAOS_OPS, checkInvariants, formatChaosReport, formatViolation, runChaos, type Invariant } from '../helpers/chaos.js';
import { killAndWait, qemuProcesses } from '../helpers/chaos-probe.js';
import { formatCyclesReport, runCycles } from '../helpers/cycles.js';

const { step, printConsolesIfFailed } = e2eSteps();
const log = (line: string) => process.stderr.write(`  ${line}\n`);

void describe('chaos: kill -9 of bangerd at random points, and stop/start cycles', { timeout: 1_500_000 }, () => {
  after(async () => {
    printConsolesIfFailed();
    const list = await banger(['vm', 'list', '--json']);
    const mine = list.code === 0 ? (JSON.parse(list.stdout) as { name: string }[]).map((v) => v.name).filter((n) => n.startsWith('chaos-')) : [];
    if (mine.length > 0) await banger(['vm', 'delete', '--force', ...mine]);
  });

  step('the default image exists or is built', async () => {
    await bangerOk(['image', 'build', 'default'], 0, { timeoutMs: 900_000 });
  });

  step('the invariant checks catch a leaked VMM process, a leaked VM directory and a half-removed VM', async () => {
    // A listed VM whose directory lost its host key: what a delete killed in the middle of its rm leaves.
    await bangerOk(['vm', 'create', '--name', 'chaos-planted', '--cpus', '1', '--memory', '512M']);
    const planted = JSON.parse((await bangerOk(['vm', 'show', 'chaos-planted', '--json'])).stdout) as { dir: string };
    rmSync(join(planted.dir, 'ssh_host_ed25519_key'));
    const id = 'chaosplanted0';
    const dir = join(E2E_HOME, 'vms', id);
    mkdirSync(dir, { recursive: true });
    // Looks like a VMM of this state directory to the checks (and to reconcile): argv[0] and a path under vms/.
    const fake = spawn('sh', ['-c', 'sleep 120; true', `${dir}/`], { argv0: 'qemu-system-planted', stdio: 'ignore' });
    // What a snapshot the daemon did not finish looks like, had reconcile not run.
    const halfSnap = join(E2E_HOME, 'snapshots', '.partial-chaosplanted');
    mkdirSync(halfSnap, { recursive: true });
    try {
      for (let i = 0; i < 100 && qemuProcesses(E2E_HOME, id).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      const found = new Set<Invariant>();
      await checkInvariants(E2E_HOME, (inv) => found.add(inv));
      for (const inv of ['qemuWithoutRecord', 'dirWithoutRecord', 'vmFilesMissing', 'snapshotHalfMade'] as const)
        assert.ok(found.has(inv), `the checks did not report ${inv} (reported: ${[...found].join(', ')})`);
    } finally {
      await killAndWait(fake.pid!);
      rmSync(dir, { recursive: true, force: true });
      rmSync(halfSnap, { recursive: true, force: true });
      await banger(['vm', 'delete', '--force', 'chaos-planted']);
    }
  });

  step(`${CHAOS_OPS.length} kill -9 points, one per operation (snapshot, restore, fork and a warm pool's refill too), leave every invariant holding`, async () => {
    const seed = process.env.BANGER_CHAOS_SEED === undefined ? undefined : Number(process.env.BANGER_CHAOS_SEED);
    const r = await runChaos({ home: E2E_HOME, points: CHAOS_OPS.length, seed, budgetMs: 900_000, log });
    log(formatChaosReport(r));
    assert.deepEqual(r.violations.map(formatViolation), [], `chaos seed ${r.seed}: invariants violated`);
    assert.deepEqual(r.setupFailures, [], `chaos seed ${r.seed}: the VM could not be brought back after a crash`);
    for (const op of CHAOS_OPS) assert.ok(r.perOp[op].points >= 1, `no point hit ${op} (seed ${r.seed})`);
  });

  step('5 stop/start cycles all succeed and bangerd keeps its open-file count', async () => {
    const r = await runCycles({ home: E2E_HOME, count: 5, log });
    log(formatCyclesReport(r));
    assert.deepEqual(r.failures, []);
    assert.equal(r.cyclesRun, 5);
    const fds = r.samples.map((s) => s.fds);
    assert.ok(fds.at(-1)! - fds[0]! <= 3, `bangerd's open fds grew from ${fds[0]} to ${fds.at(-1)} over 5 cycles`);
  });
});
