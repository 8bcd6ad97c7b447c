/**
 * A VM restored from a snapshot against a cold boot, in the same run and the same state directory:
 * `banger vm run --from SNAP --rm -- true` vs `banger vm run --rm -- true` with the snapshot's CPUs and memory.
 * Both include creating the VM's files, the VMM, a command over the guest, and deletion; the restore also
 * includes giving the guest its identity (clock, host key, hostname, machine-id, RNG) and SSH with the new key.
 * Also printed: the snapshot's pause of the source VM and its size on the host.
 * Usage: npm run build && BANGER_HOME=... node --import tsx bench/snapshot.ts [runs]
 */
import { banger, report, timeIt } from './common.js';

const runs = Number(process.argv[2] ?? 3);
const SRC = 'bench-snap-src';
const SNAP = 'bench-snap';

const quiet = (args: string[]) => {
  try {
    banger(args);
  } catch {
    /* not there */
  }
};
quiet(['vm', 'delete', '--force', SRC]);
quiet(['snapshot', 'delete', SNAP]);
banger(['vm', 'create', '--name', SRC, '--start', '--cpus', '1', '--memory', '768M']);
try {
  // Wait for the guest agent (the restore needs it in the saved guest).
  for (let i = 0; ; i++) {
    try {
      banger(['vm', 'stats', SRC]);
      break;
    } catch (e) {
      if (i > 240) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  const snap = JSON.parse(banger(['vm', 'snapshot', SRC, '--name', SNAP, '--json'])) as { pausedMs: number; hostBytes: number };
  process.stdout.write(`snapshot: source paused ${snap.pausedMs} ms; ${(snap.hostBytes / 1024 / 1024).toFixed(1)} MiB on the host\n`);
  const restored: number[] = [];
  const cold: number[] = [];
  for (let i = 0; i < runs; i++) {
    restored.push(timeIt(() => banger(['vm', 'run', '--from', SNAP, '--rm', '--', 'true'])));
    cold.push(timeIt(() => banger(['vm', 'run', '--rm', '--cpus', '1', '--memory', '768M', '--no-sync', '--', 'true'])));
  }
  report('vm run --rm -- true: restored from a snapshot vs a cold boot', restored, cold, 'cold boot (same CPUs, memory)');
} finally {
  quiet(['vm', 'delete', '--force', SRC]);
  quiet(['snapshot', 'delete', SNAP]);
}
