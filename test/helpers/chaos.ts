/**
 * kill -9 of bangerd at random points of VM operations, then the next CLI call, then the invariants a user
 * relies on after a crash (shared by test/e2e/chaos.test.ts and bench/chaos.ts):
 * - no QEMU process of this state directory without a VM record (nor one of a VM not recorded running);
 * - no directory under vms/ without a record, and no record whose directory lacks a disk or key file
 *   (such a VM is listed but cannot start);
 * - no VM left `starting` or `stopping`;
 * - every `running` VM answers `vm exec NAME -- true`;
 * - `pragma integrity_check` of state.db is ok;
 * - no snapshot left half-made (`.partial-`/`.deleting-` directories, a directory without its record, a
 *   restorable snapshot without its files);
 * - after a kill during `vm snapshot` or `vm fork` (which move the source VM onto new disk layers), a file the
 *   source VM writes afterwards survives its stop and start.
 * The invariants are global to the state directory; the VMs this makes are named with a prefix so
 * recovery between points only ever deletes its own.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Paths, type VmPaths } from '../../src/shared/paths.js';
import { SNAPSHOT_FILES, holdsSavedState, type SnapshotRecord } from '../../src/daemon/services/snapshot/store.js';
import { banger } from './cli.js';
import {
  daemonPid,
  killAndWait,
  qemuProcesses,
  readStateDb,
  spawnCli,
  vmConsole,
  vmDirs,
  type VmRow,
} from './chaos-probe.js';
import { git, isolateGitConfig, tmp, write } from './workspace-repo.js';

export const CHAOS_OPS = [
  'create', 'boot', 'boot-at-qemu', 'import', 'export', 'stop', 'delete', 'snapshot', 'restore', 'fork', 'refill',
] as const;
/** The image whose warm pool `refill` points fill (the image every chaos VM uses). */
const POOL_IMAGE = 'default';
/** Operations after which the pool VM sits on new disk layers: it and this run's snapshots go after the point. */
const LAYERING_OPS: readonly ChaosOp[] = ['snapshot', 'restore', 'fork'];
export type ChaosOp = (typeof CHAOS_OPS)[number];

export const INVARIANTS = [
  'qemuWithoutRecord',
  'qemuOfVmNotRunning',
  'dirWithoutRecord',
  'vmFilesMissing',
  'transitionalState',
  'runningWithoutExec',
  'integrityCheck',
  'snapshotHalfMade',
  'writeLost',
  'nextCallFailed',
  'cliHung',
] as const;
export type Invariant = (typeof INVARIANTS)[number];

export interface Violation {
  point: number;
  op: ChaosOp;
  delayMs: number;
  invariant: Invariant;
  found: string;
  console?: string;
}

export interface OpStats {
  points: number;
  /** The CLI call was still running when bangerd was killed. */
  killedMidOp: number;
  /** The call had already succeeded: the kill hit an idle daemon right after it. */
  finishedBeforeKill: number;
  /** The call had already failed on its own (its stderr is in `notes`). */
  failedBeforeKill: number;
}

export interface ChaosResult {
  seed: number;
  pointsRun: number;
  perOp: Record<ChaosOp, OpStats>;
  violations: Violation[];
  /** Preconditions that could not be arranged (e.g. the VM would not boot after a crash). */
  setupFailures: string[];
  notes: string[];
  stoppedByTimeBudget: boolean;
}

export interface ChaosOptions {
  home: string;
  points: number;
  seed?: number;
  /** Stop starting new points after this long. */
  budgetMs?: number;
  prefix?: string;
  /** Only these operations (default: all of CHAOS_OPS). */
  ops?: readonly ChaosOp[];
  log?: (line: string) => void;
}

/** A small seeded PRNG (mulberry32), so a run can be repeated with its printed seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The operations of a run: every op once (shuffled) first, then uniformly random ones. */
export function chaosSchedule(points: number, random: () => number, ops: readonly ChaosOp[] = CHAOS_OPS): ChaosOp[] {
  const first = [...ops];
  for (let i = first.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [first[i], first[j]] = [first[j]!, first[i]!];
  }
  const rest = Array.from({ length: Math.max(0, points - first.length) }, () => ops[Math.floor(random() * ops.length)]!);
  return [...first, ...rest].slice(0, points);
}

/** A checkout whose import lasts long enough to be interrupted: 300 small files and one 5 MB file. */
export function makeChaosRepo(): string {
  isolateGitConfig();
  const root = join(tmp('banger-chaos-'), 'chaos-repo');
  git(tmp('banger-chaos-init-'), 'init', '-q', '-b', 'main', root);
  for (let i = 0; i < 300; i++) write(root, `src/d${i % 10}/f${i}.txt`, `file ${i}\n`.repeat(20));
  write(root, 'big.bin', randomBytes(5 << 20));
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'chaos fixture');
  return root;
}

interface ListedVm {
  id: string;
  name: string;
  state: string;
  workspace: unknown;
}

const CLI_EXIT_WAIT_MS = 60_000;

/** Runs the chaos points and returns what was seen; never throws for a violation (the caller decides). */
export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const home = opts.home;
  const prefix = opts.prefix ?? 'chaos-';
  const pool = `${prefix}a`;
  const log = opts.log ?? (() => undefined);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = rng(seed);
  const started = Date.now();
  const repo = makeChaosRepo();
  const patchFile = join(tmp('banger-chaos-patch-'), 'out.patch');
  // Typical durations (ms) of each call from spawning the CLI to its exit, refined from the calls that arrange
  // preconditions (never killed, so not biased towards the short ones). Export and delete are not run there.
  const typical: Record<ChaosOp, number> = {
    create: 1000, boot: 9000, 'boot-at-qemu': 9000, import: 5000, export: 1500, stop: 2500, delete: 1000,
    snapshot: 800, restore: 5000, fork: 8000,
    // `pool set` returns at once; the kill aims at the refill it starts: a boot, then the wait for the agent.
    refill: 11000,
  };
  const learn = (op: ChaosOp, ms: number) => (typical[op] = Math.round(typical[op] * 0.7 + ms * 0.3));
  const perOp = Object.fromEntries(
    CHAOS_OPS.map((o) => [o, { points: 0, killedMidOp: 0, finishedBeforeKill: 0, failedBeforeKill: 0 }]),
  ) as Record<ChaosOp, OpStats>;
  const result: ChaosResult = { seed, pointsRun: 0, perOp, violations: [], setupFailures: [], notes: [], stoppedByTimeBudget: false };

  const cli = async (args: string[], op?: ChaosOp, timeoutMs = 300_000) => {
    const t0 = Date.now();
    const r = await banger(args, { home, timeoutMs });
    if (r.code === 0 && op) learn(op, Date.now() - t0);
    if (r.code !== 0) throw new Error(`banger ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(-800)}`);
    return r;
  };
  let current = 0;
  // A setup failure is most often what the previous kill left behind.
  let previousKill = 'none yet';
  const list = async (): Promise<ListedVm[]> => JSON.parse((await cli(['vm', 'list', '--json'])).stdout) as ListedVm[];

  /** Brings the pool VM to the state an operation needs; recreates it when it cannot get there. */
  const arrange = async (want: 'stopped' | 'running' | 'workspace'): Promise<ListedVm> => {
    for (let attempt = 1; ; attempt++) {
      try {
        let vm = (await list()).find((v) => v.name === pool);
        if (!vm) {
          await cli(['vm', 'create', '--name', pool, '--cpus', '1', '--memory', '512M'], 'create');
          vm = (await list()).find((v) => v.name === pool)!;
        }
        if (want === 'stopped' && vm.state === 'running') await cli(['vm', 'stop', pool], 'stop');
        if (want !== 'stopped' && vm.state !== 'running') await cli(['vm', 'start', pool], 'boot');
        if (want === 'workspace' && !vm.workspace) await cli(['vm', 'workspace', 'prepare', pool, repo], 'import');
        return (await list()).find((v) => v.name === pool)!;
      } catch (e) {
        result.setupFailures.push(
          `point ${current}: arranging a ${want} VM (attempt ${attempt}; previous kill: ${previousKill}): ${(e as Error).message}`,
        );
        log(`setup failure: ${(e as Error).message}`);
        if (attempt >= 2) throw e;
        await banger(['vm', 'delete', '--force', pool], { home, timeoutMs: 120_000 });
      }
    }
  };

  /** A restorable snapshot of the pool VM for `restore` points (taken once, until recovery removes it). */
  const arrangeSnapshot = async (): Promise<string> => {
    const name = `${prefix}base`;
    const snaps = JSON.parse((await cli(['snapshot', 'list', '--json'])).stdout) as { name: string; restorable: boolean }[];
    if (snaps.some((s) => s.name === name && s.restorable)) return name;
    await arrange('running');
    await cli(['vm', 'snapshot', pool, '--name', name], 'snapshot');
    return name;
  };

  const schedule = chaosSchedule(opts.points, random, opts.ops);
  log(`chaos: ${opts.points} points, seed ${seed}, home ${home}`);
  for (let i = 0; i < schedule.length; i++) {
    if (opts.budgetMs !== undefined && Date.now() - started > opts.budgetMs) {
      result.stoppedByTimeBudget = true;
      break;
    }
    const point = i + 1;
    current = point;
    const op = schedule[i]!;
    let args: string[];
    let vmId: string | undefined;
    try {
      switch (op) {
        case 'create':
          args = ['vm', 'create', '--name', `${prefix}n${point}`, '--cpus', '1', '--memory', '512M'];
          break;
        case 'boot':
        case 'boot-at-qemu':
          vmId = (await arrange('stopped')).id;
          args = ['vm', 'start', pool];
          break;
        case 'import':
          await arrange('running');
          args = ['vm', 'workspace', 'prepare', pool, repo];
          break;
        case 'export':
          await arrange('workspace');
          args = ['vm', 'workspace', 'export', pool, '-o', patchFile];
          break;
        case 'stop':
          await arrange('running');
          args = ['vm', 'stop', pool];
          break;
        case 'delete':
          await arrange(random() < 0.5 ? 'running' : 'stopped');
          args = ['vm', 'delete', '--force', pool];
          break;
        case 'snapshot':
          await arrange('running');
          args = ['vm', 'snapshot', pool, '--name', `${prefix}s${point}`];
          break;
        case 'restore':
          args = ['vm', 'create', '--from', await arrangeSnapshot(), '--name', `${prefix}r${point}`, '--start'];
          break;
        case 'fork':
          await arrange('running');
          args = ['vm', 'fork', pool, '--count', '2', '--name', `${prefix}f${point}`];
          break;
        case 'refill':
          await cli(['pool', 'set', POOL_IMAGE, '--size', '0']);
          args = ['pool', 'set', POOL_IMAGE, '--size', '1'];
          break;
      }
    } catch {
      continue; // recorded in setupFailures
    }

    const pid = await daemonPid(home);
    const delayMs = op === 'boot-at-qemu' ? 0 : Math.round(random() * typical[op]);
    const call = spawnCli(home, args);
    if (op === 'boot-at-qemu') {
      // Kill at the instant the VM's QEMU process appears.
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline && !call.exited() && qemuProcesses(home, vmId).length === 0) await sleep(3);
      if (qemuProcesses(home, vmId).length === 0) result.notes.push(`point ${point} boot-at-qemu: no QEMU process was seen`);
    } else {
      await sleep(Math.max(0, call.startedAt + delayMs - Date.now()));
    }
    // A refill's call returns at once: what the kill interrupts is the pool VM's boot in the daemon.
    const wasRunning = op === 'refill' ? refillUnderWay(home) : !call.exited();
    const sinceStart = Date.now() - call.startedAt;
    await killAndWait(pid);
    previousKill = `point ${point}, \`banger ${args.join(' ')}\` killed at ${sinceStart} ms${wasRunning ? '' : ' (after it ended)'}`;

    let end = await Promise.race([call.done, sleep(CLI_EXIT_WAIT_MS).then(() => undefined)]);
    const violate = (invariant: Invariant, found: string, consoleText?: string) => {
      const v: Violation = { point, op, delayMs: sinceStart, invariant, found, console: consoleText };
      result.violations.push(v);
      log(formatViolation(v));
    };
    if (!end) {
      violate('cliHung', `\`banger ${args.join(' ')}\` did not exit within ${CLI_EXIT_WAIT_MS / 1000} s of bangerd's death`);
      call.child.kill('SIGKILL');
      end = await call.done;
    }
    const stats = perOp[op];
    stats.points++;
    if (wasRunning) stats.killedMidOp++;
    else if (end.code === 0) stats.finishedBeforeKill++;
    else {
      stats.failedBeforeKill++;
      result.notes.push(`point ${point} ${op}: failed before the kill (exit ${end.code}): ${end.stderr.trim().slice(-400)}`);
    }
    result.pointsRun++;

    // The next CLI call restarts the daemon, which reconciles before it answers. After a refill point it empties
    // the pool, so that no new refill is booting while the invariants are checked: what the killed refill left
    // must be gone by then, as reconcile removes it (the pool's own trim removes parked VMs only).
    const nextArgs = op === 'refill' ? ['pool', 'set', POOL_IMAGE, '--size', '0'] : ['vm', 'list', '--json'];
    const next = await banger(nextArgs, { home, timeoutMs: 180_000 });
    if (next.code !== 0) {
      violate('nextCallFailed', `\`banger ${nextArgs.join(' ')}\` exited ${next.code}: ${next.stderr.trim().slice(-800)}`);
      continue;
    }
    await checkInvariants(home, violate);
    if (op === 'snapshot' || op === 'fork') await checkWritesKept(home, pool, violate);
    log(`point ${point}/${schedule.length} ${op} killed at ${sinceStart} ms${wasRunning ? '' : ' (call had ended)'}: ${result.violations.filter((v) => v.point === point).length} violations`);
    await recover(home, prefix, pool, LAYERING_OPS.includes(op));
  }
  const mine = (await list().catch(() => [])).map((v) => v.name).filter((n) => n.startsWith(prefix));
  if (mine.length > 0) await banger(['vm', 'delete', '--force', ...mine], { home, timeoutMs: 300_000 });
  await deleteSnapshots(home, prefix);
  rmSync(repo, { recursive: true, force: true });
  return result;
}

/**
 * The source VM of a killed `vm snapshot`/`vm fork` keeps what it writes: its next start must open the disk
 * layers it was moved onto, not the frozen files under them (a daemon killed between the two once left exactly
 * that). The file is written after the kill, so the VM is on whichever layer it ended up on.
 */
async function checkWritesKept(
  home: string,
  pool: string,
  violate: (invariant: Invariant, found: string, consoleText?: string) => void,
): Promise<void> {
  const vm = (JSON.parse((await banger(['vm', 'list', '--json'], { home })).stdout) as ListedVm[]).find((v) => v.name === pool);
  if (vm?.state !== 'running') return;
  const mark = randomBytes(8).toString('hex');
  const steps: [string, string[]][] = [
    ['write a file', ['vm', 'exec', pool, '--', 'sh', '-c', `echo ${mark} >/root/chaos-mark && sync`]],
    ['stop', ['vm', 'stop', pool]],
    ['start', ['vm', 'start', pool]],
    ['read it back', ['vm', 'exec', pool, '--', 'cat', '/root/chaos-mark']],
  ];
  for (const [what, args] of steps) {
    const r = await banger(args, { home, timeoutMs: 180_000 });
    if (r.code !== 0) return violate('writeLost', `${what} (\`banger ${args.join(' ')}\`) exited ${r.code}: ${r.stderr.trim().slice(-400)}`, await vmConsole(home, vm));
    if (what === 'read it back' && r.stdout.trim() !== mark)
      violate('writeLost', `VM ${pool} read back '${r.stdout.trim()}' after a stop and start, not the '${mark}' it wrote`);
  }
}

/** This run's snapshots, newest first (a later one may be layered on an earlier one); in-use ones stay. */
async function deleteSnapshots(home: string, prefix: string): Promise<void> {
  const r = await banger(['snapshot', 'list', '--json'], { home });
  if (r.code !== 0) return;
  const mine = (JSON.parse(r.stdout) as { name: string; createdAt: string }[])
    .filter((s) => s.name.startsWith(prefix))
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  for (const s of mine) await banger(['snapshot', 'delete', s.name], { home });
}

/** Checks every invariant once (after the next CLI call); reports each finding through `violate`. */
export async function checkInvariants(
  home: string,
  violate: (invariant: Invariant, found: string, consoleText?: string) => void,
): Promise<void> {
  let rows: VmRow[];
  try {
    const db = readStateDb(home);
    rows = db.rows;
    if (db.integrity !== 'ok') violate('integrityCheck', `pragma integrity_check: ${db.integrity}`);
  } catch (e) {
    violate('integrityCheck', `state.db could not be read: ${(e as Error).message}`);
    return;
  }
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const p of qemuProcesses(home)) {
    const rec = p.vmId === undefined ? undefined : byId.get(p.vmId);
    if (!rec) violate('qemuWithoutRecord', `QEMU pid ${p.pid} of VM id ${p.vmId ?? '?'} has no record`, await vmConsole(home, { id: p.vmId }));
    else if (rec.state !== 'running')
      violate('qemuOfVmNotRunning', `QEMU pid ${p.pid} runs for VM ${rec.name} recorded ${rec.state}`, await vmConsole(home, rec));
  }
  for (const dir of vmDirs(home))
    if (!byId.has(dir)) violate('dirWithoutRecord', `vms/${dir} has no record`, await vmConsole(home, { id: dir }));
  for (const problem of halfMadeSnapshots(home)) violate('snapshotHalfMade', problem);
  for (const r of rows) {
    const missing = missingVmFiles(new Paths(home).vm(r.id));
    if (missing.length > 0)
      violate('vmFilesMissing', `VM ${r.name} (${r.id}, ${r.state}) lacks ${missing.join(', ')}`, await vmConsole(home, r));
    if (r.state === 'starting' || r.state === 'stopping')
      violate('transitionalState', `VM ${r.name} (${r.id}) is left ${r.state}`, await vmConsole(home, r));
    if (r.state === 'running') {
      const ex = await banger(['vm', 'exec', r.name, '--', 'true'], { home, timeoutMs: 90_000 });
      if (ex.code !== 0)
        violate('runningWithoutExec', `VM ${r.name} is running but \`vm exec -- true\` exited ${ex.code}: ${ex.stderr.trim().slice(-400)}`, await vmConsole(home, r));
    }
  }
}

/** Whether a warm pool's VM is being made or booted (a record of the pool in state created or starting). */
function refillUnderWay(home: string): boolean {
  try {
    return readStateDb(home).rows.some((r) => r.name.startsWith(`pool-${POOL_IMAGE}-`) && (r.state === 'created' || r.state === 'starting'));
  } catch {
    return false;
  }
}

/** Snapshot directories a finished daemon start should not leave: unfinished work, or a record without files. */
function halfMadeSnapshots(home: string): string[] {
  const dir = new Paths(home).snapshotsDir;
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const n of readdirSync(dir)) {
    if (n.startsWith('.')) {
      out.push(`snapshots/${n} is left`);
      continue;
    }
    if (!existsSync(join(dir, n, SNAPSHOT_FILES.record))) {
      out.push(`snapshots/${n} has no ${SNAPSHOT_FILES.record}`);
      continue;
    }
    // Every snapshot keeps its frozen disks; one that holds its saved state (by the product's own rule: not
    // unfinished, not a fork's that let it go) also its state files.
    const rec = JSON.parse(readFileSync(join(dir, n, SNAPSHOT_FILES.record), 'utf8')) as SnapshotRecord;
    const F = SNAPSHOT_FILES;
    const saved = holdsSavedState(rec) ? [F.state, ...(rec.ram === 'file' ? [F.memory] : [])] : [];
    const files = [rec.rootFormat === 'raw' ? F.rootRaw : F.root, F.work, ...saved];
    const missing = files.filter((f) => !existsSync(join(dir, n, f)));
    if (missing.length > 0) out.push(`snapshots/${n} lacks ${missing.join(', ')}`);
  }
  return out;
}

/** The files every created VM has until it is deleted (its disks and SSH identity). */
function missingVmFiles(vp: VmPaths): string[] {
  const required = [vp.workDisk, vp.hostKeyPrivate, vp.hostKeyPublic, vp.knownHosts];
  const missing = required.filter((f) => !existsSync(f));
  if (!existsSync(vp.rootDisk) && !existsSync(vp.rootDiskRaw)) missing.push(vp.rootDisk);
  return missing.map((f) => basename(f));
}

/**
 * Puts things back so one finding does not cascade into the next points: leaked QEMU processes and
 * directories (which no record owns, so nothing else will remove them) go; this run's VMs other than the
 * pool VM, and the pool VM when it is broken, are deleted.
 */
async function recover(home: string, prefix: string, pool: string, layered: boolean): Promise<void> {
  const { rows } = readStateDb(home);
  const ids = new Set(rows.map((r) => r.id));
  for (const p of qemuProcesses(home)) if (p.vmId === undefined || !ids.has(p.vmId)) await killAndWait(p.pid);
  for (const dir of vmDirs(home)) if (!ids.has(dir)) rmSync(join(home, 'vms', dir), { recursive: true, force: true });
  const broken = (r: VmRow) =>
    r.state === 'starting' || r.state === 'stopping' || r.state === 'error' || missingVmFiles(new Paths(home).vm(r.id)).length > 0;
  const doomed = rows.filter((r) => r.name.startsWith(prefix) && (r.name !== pool || broken(r) || layered));
  for (const r of doomed) await banger(['vm', 'delete', '--force', r.name], { home, timeoutMs: 120_000 });
  // Each snapshot adds a disk layer under the pool VM: after such a point it went (above), and so do the
  // snapshots, so neither layers nor snapshot files pile up over a long run.
  if (layered) await deleteSnapshots(home, prefix);
}

export function formatViolation(v: Violation): string {
  return [
    `VIOLATION ${v.invariant} at point ${v.point} (${v.op}, bangerd killed ${v.delayMs} ms after the call started): ${v.found}`,
    ...(v.console ? ['----- console -----', v.console.trimEnd(), '----- end -----'] : []),
  ].join('\n');
}

/** The figures of a run: per-operation counts and the total of each invariant's violations. */
export function formatChaosReport(r: ChaosResult): string {
  const lines = [`chaos run: ${r.pointsRun} points, seed ${r.seed}${r.stoppedByTimeBudget ? ' (stopped by the time budget)' : ''}`];
  lines.push(`  ${'operation'.padEnd(14)} ${'points'.padStart(6)} ${'killed mid-op'.padStart(14)} ${'done before'.padStart(12)} ${'failed before'.padStart(14)}`);
  for (const op of CHAOS_OPS) {
    const s = r.perOp[op];
    lines.push(`  ${op.padEnd(14)} ${String(s.points).padStart(6)} ${String(s.killedMidOp).padStart(14)} ${String(s.finishedBeforeKill).padStart(12)} ${String(s.failedBeforeKill).padStart(14)}`);
  }
  lines.push('  violations:');
  for (const inv of INVARIANTS) lines.push(`    ${inv.padEnd(20)} ${r.violations.filter((v) => v.invariant === inv).length}`);
  lines.push(`  setup failures: ${r.setupFailures.length}`);
  for (const s of r.setupFailures) lines.push(`    ${s}`);
  if (r.notes.length) lines.push('  notes:', ...r.notes.map((n) => `    ${n}`));
  return lines.join('\n');
}
