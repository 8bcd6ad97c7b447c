/**
 * Snapshots, warm pools and fork against a cold boot, in the same run and the same state directory.
 *  - restore: `banger vm run --from SNAP --rm -- true` vs `banger vm run --no-pool --rm -- true` with the
 *    snapshot's CPUs and memory. Both include the VM's files, the VMM, a command over the guest, deletion;
 *    the restore also gives the guest its identity (clock, host key, hostname, machine-id, RNG).
 *  - pool: `banger vm run --rm -- true` taking a parked VM (`banger pool set default --size 1`, waited for
 *    before each run) vs the same with `--no-pool` (the issue asks warm to be at least 10x faster).
 *  - fork: `banger vm fork VM --count 4` of a running VM with a 200 MiB workspace file, until all 4 answer
 *    `vm exec -- true` (asked side by side), vs one cold boot (the issue asks at most 0.25x); and the source's
 *    pause. In the last run, the forks' memory 30 s later (PSS of each VMM process) against the source's.
 * Also printed: the snapshot's pause of the source VM and its size on the host.
 * Usage: npm run build && BANGER_HOME=... node --import tsx bench/snapshot.ts [runs] [sections]
 * (sections: comma-separated of restore,pool,fork; default all three).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { agentUp, banger, bangerAsync, median, pssMib, quiet, report, tcgCacheMib, timeIt } from './common.js';

const runs = Number(process.argv[2] ?? 3);
const sections = new Set((process.argv[3] ?? 'restore,pool,fork').split(','));
const SRC = 'bench-snap-src';
const SNAP = 'bench-snap';
const FORK_SRC = 'bench-fork-src';
const FORKS = [1, 2, 3, 4].map((i) => `bench-fork-${i}`);


/** PSS of a VM's VMM process (see pssMib in common.ts). */
function vmPssMib(vm: string): { total: number; tcgCode: number } {
  const { pid } = JSON.parse(banger(['vm', 'show', vm, '--json'])) as { pid: number | null };
  if (pid === null) throw new Error(`VM ${vm} has no VMM process`);
  return pssMib(pid, tcgCacheMib());
}

const cold = () => timeIt(() => banger(['vm', 'run', '--no-pool', '--rm', '--no-sync', '--', 'true']));

if (sections.has('restore')) {
  quiet(['vm', 'delete', '--force', SRC]);
  quiet(['snapshot', 'delete', SNAP]);
  banger(['vm', 'create', '--name', SRC, '--start', '--no-pool', '--cpus', '1', '--memory', '768M']);
  try {
    await agentUp(SRC);
    const snap = JSON.parse(banger(['vm', 'snapshot', SRC, '--name', SNAP, '--json'])) as { pausedMs: number; hostBytes: number };
    process.stdout.write(`snapshot: source paused ${snap.pausedMs} ms; ${(snap.hostBytes / 1024 / 1024).toFixed(1)} MiB on the host\n`);
    const restored: number[] = [];
    const boots: number[] = [];
    for (let i = 0; i < runs; i++) {
      restored.push(timeIt(() => banger(['vm', 'run', '--from', SNAP, '--rm', '--', 'true'])));
      boots.push(timeIt(() => banger(['vm', 'run', '--no-pool', '--rm', '--cpus', '1', '--memory', '768M', '--no-sync', '--', 'true'])));
    }
    report('vm run --rm -- true: restored from a snapshot vs a cold boot', restored, boots, 'cold boot (same CPUs, memory)');
  } finally {
    quiet(['vm', 'delete', '--force', SRC]);
    quiet(['snapshot', 'delete', SNAP]);
  }
}

if (sections.has('pool')) {
  const parked = async () => {
    for (let i = 0; ; i++) {
      const [p] = JSON.parse(banger(['pool', 'status', '--json'])) as { ready: number; lastError: string | null }[];
      if (p && p.ready >= 1) return;
      if (i > 600) throw new Error(`the pool did not fill: ${JSON.stringify(p)}`);
      await sleep(1000);
    }
  };
  banger(['pool', 'set', 'default', '--size', '1']);
  try {
    const warm: number[] = [];
    const boots: number[] = [];
    for (let i = 0; i < runs; i++) {
      await parked();
      warm.push(timeIt(() => banger(['vm', 'run', '--rm', '--no-sync', '--', 'true'])));
      // The cold boot runs once the refill has finished, so the two do not share the CPUs.
      await parked();
      boots.push(cold());
    }
    report('vm run --rm -- true: from the warm pool vs a cold boot', warm, boots, 'cold boot (--no-pool)');
    process.stdout.write(`  cold/warm: ${(median(boots) / median(warm)).toFixed(1)}x faster from the pool\n`);
  } finally {
    quiet(['pool', 'set', 'default', '--size', '0']);
  }
}

if (sections.has('fork')) {
  for (const vm of [FORK_SRC, ...FORKS]) quiet(['vm', 'delete', '--force', vm]);
  banger(['vm', 'create', '--name', FORK_SRC, '--start', '--no-pool', '--cpus', '1', '--memory', '768M']);
  try {
    await agentUp(FORK_SRC);
    // A 200 MiB workspace: its bytes are in the work disk, which the forks share copy-on-write.
    banger(['vm', 'exec', FORK_SRC, '--', 'sh', '-c', 'mkdir -p /root/ws && head -c 209715200 /dev/urandom > /root/ws/blob && sync']);
    const forks: number[] = [];
    const boots: number[] = [];
    const pauses: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      const r = JSON.parse(banger(['vm', 'fork', FORK_SRC, '--count', '4', '--name', 'bench-fork', '--json'])) as {
        snapshot: { pausedMs: number; name: string };
      };
      // Until all 4 answer: each is asked at once, as a user starting an agent in each would.
      await Promise.all(FORKS.map((f) => bangerAsync(['vm', 'exec', f, '--', 'true'])));
      forks.push(performance.now() - t0);
      pauses.push(r.snapshot.pausedMs);
      if (i === runs - 1) {
        // The issue's memory measure: the forks idle for 30 s, then the PSS of each one's VMM, against the
        // source (booted cold, and holding the 200 MiB it wrote).
        await sleep(30_000);
        const per = FORKS.map(vmPssMib);
        const src = vmPssMib(FORK_SRC);
        const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
        const fork = mean(per.map((p) => p.total));
        const forkCode = mean(per.map((p) => p.tcgCode));
        process.stdout.write(
          `  memory 30 s after fork (PSS of the VMM): forks ${per.map((x) => x.total.toFixed(0)).join(', ')} MiB (mean ${fork.toFixed(0)}),` +
            ` source booted cold ${src.total.toFixed(0)} MiB; ratio ${(fork / src.total).toFixed(2)}x\n` +
            `  of which TCG's translated code (none under KVM): forks ${forkCode.toFixed(0)} MiB, source ${src.tcgCode.toFixed(0)} MiB;` +
            ` without it ${(fork - forkCode).toFixed(0)} vs ${(src.total - src.tcgCode).toFixed(0)} MiB\n`,
        );
      }
      for (const f of FORKS) quiet(['vm', 'delete', '--force', f]);
      boots.push(cold());
    }
    report('vm fork --count 4 until all 4 answer exec vs one cold boot', forks, boots, 'one cold boot (vm run --rm -- true)');
    process.stdout.write(`  source paused: ${pauses.map((p) => `${p} ms`).join(', ')}\n`);
  } finally {
    // One name per delete: a delete of several stops at the first that is gone.
    for (const vm of [...FORKS, FORK_SRC]) quiet(['vm', 'delete', '--force', vm]);
    // The forks' snapshots outlive their source by design; this run's go, newest first (each later one is
    // layered on the one before).
    try {
      const snaps = JSON.parse(banger(['snapshot', 'list', '--json'])) as { name: string; createdAt: string }[];
      const mine = snaps.filter((x) => x.name.startsWith('bench-fork-')).sort((a, b) => b.createdAt.localeCompare(a.createdAt));
      for (const s of mine) quiet(['snapshot', 'delete', s.name]);
    } catch {
      /* none */
    }
  }
}
