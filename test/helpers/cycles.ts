/**
 * Stop/start cycles of one VM (shared by test/e2e/chaos.test.ts and bench/cycles.ts): every cycle must
 * succeed and end with a VM that answers `vm exec -- true`, and the daemon must not grow in memory, open
 * files or disk. Figures are sampled at the start, every 10% and at the end.
 */
import { join } from 'node:path';
import { banger } from './cli.js';
import { daemonPid, diskUse, processFigures } from './chaos-probe.js';

export interface CycleSample {
  cycle: number;
  daemonPid: number;
  rssBytes: number;
  fds: number;
  /** `du -sb` of vms/<id> and logs/: apparent size. */
  diskApparentBytes: number;
  /** `du -s -B1` of the same: blocks actually allocated (the sparse work disk fills up only as written). */
  diskAllocatedBytes: number;
}

export interface CyclesResult {
  vm: string;
  cyclesRun: number;
  failures: string[];
  samples: CycleSample[];
}

export interface CyclesOptions {
  home: string;
  count: number;
  name?: string;
  /** The VM's size: 1 vCPU and 512M unless given (light on a host that runs other VMs beside it). */
  cpus?: number;
  memory?: string;
  log?: (line: string) => void;
}

export async function runCycles(opts: CyclesOptions): Promise<CyclesResult> {
  const home = opts.home;
  const name = opts.name ?? 'chaos-cycles';
  const log = opts.log ?? (() => undefined);
  const failures: string[] = [];
  const samples: CycleSample[] = [];
  const call = async (cycle: number, args: string[]): Promise<boolean> => {
    const r = await banger(args, { home, timeoutMs: 300_000 });
    if (r.code === 0) return true;
    const f = `cycle ${cycle}: \`banger ${args.join(' ')}\` exited ${r.code}: ${r.stderr.trim().slice(-600)}`;
    failures.push(f);
    log(f);
    return false;
  };

  await banger(['vm', 'delete', '--force', name], { home });
  const created = await banger(['vm', 'create', '--name', name, '--cpus', String(opts.cpus ?? 1), '--memory', opts.memory ?? '512M'], { home });
  if (created.code !== 0) throw new Error(`could not create ${name}: ${created.stderr}`);
  const shown = await banger(['vm', 'show', name, '--json'], { home });
  const id = (JSON.parse(shown.stdout) as { id: string }).id;
  const sample = async (cycle: number) => {
    const pid = await daemonPid(home);
    const prev = samples.at(-1);
    if (prev && prev.daemonPid !== pid) failures.push(`cycle ${cycle}: bangerd was restarted (pid ${prev.daemonPid} -> ${pid})`);
    const disk = diskUse([join(home, 'vms', id), join(home, 'logs')]);
    const s: CycleSample = { cycle, daemonPid: pid, ...processFigures(pid), diskApparentBytes: disk.apparentBytes, diskAllocatedBytes: disk.allocatedBytes };
    samples.push(s);
    log(`cycle ${cycle}: rss ${mib(s.rssBytes)}, fds ${s.fds}, disk ${mib(s.diskAllocatedBytes)} allocated / ${mib(s.diskApparentBytes)} apparent`);
  };

  let cyclesRun = 0;
  try {
    if (!(await call(0, ['vm', 'start', name])) || !(await call(0, ['vm', 'exec', name, '--', 'true'])))
      return { vm: name, cyclesRun, failures, samples };
    await sample(0);
    const every = Math.max(1, Math.ceil(opts.count / 10));
    for (let c = 1; c <= opts.count; c++) {
      // A failed step is retried by the next cycle's start; the failure stays counted.
      if (await call(c, ['vm', 'stop', name])) if (await call(c, ['vm', 'start', name])) await call(c, ['vm', 'exec', name, '--', 'true']);
      cyclesRun = c;
      if (c % every === 0 || c === opts.count) await sample(c);
    }
  } finally {
    await banger(['vm', 'delete', '--force', name], { home });
  }
  return { vm: name, cyclesRun, failures, samples };
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Failures, then first/last/max of each sampled figure. */
export function formatCyclesReport(r: CyclesResult): string {
  const lines = [`stop/start cycles of ${r.vm}: ${r.cyclesRun} run, ${r.failures.length} failures`];
  for (const f of r.failures) lines.push(`  FAILURE ${f}`);
  const figure = (label: string, pick: (s: CycleSample) => number, fmt: (n: number) => string) => {
    if (r.samples.length === 0) return;
    const xs = r.samples.map(pick);
    lines.push(`  ${label.padEnd(26)} first ${fmt(xs[0]!).padStart(12)}  last ${fmt(xs.at(-1)!).padStart(12)}  max ${fmt(Math.max(...xs)).padStart(12)}`);
  };
  figure('daemon RSS', (s) => s.rssBytes, mib);
  figure('daemon open fds', (s) => s.fds, String);
  figure('disk allocated (du -s -B1)', (s) => s.diskAllocatedBytes, mib);
  figure('disk apparent (du -sb)', (s) => s.diskApparentBytes, mib);
  return lines.join('\n');
}
