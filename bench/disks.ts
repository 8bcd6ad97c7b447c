/**
 * A work disk's cost by size, in one run:
 * - `banger vm create --disk-size 64G` against `--disk-size 1G` through the CLI (no boot; the issue asks for at
 *   most 1.1x), with what the work disk costs the host;
 * - banger's work disk maker alone (truncate + mkfs.ext4 with its flags) at 64G and 1G, and plain `mkfs.ext4`
 *   at 64G for reference (it zeroes a 512 MiB journal).
 * Usage: npm run build && node --import tsx bench/disks.ts [runs]   (BANGER_HOME as the other benches)
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeWorkDisk } from '../src/daemon/services/vm/disks.js';
import { runCommand } from '../src/shared/command.js';
import { banger, median, report, sh, timeIt } from './common.js';

const runs = Number(process.argv[2] ?? 9);
const dir = mkdtempSync(join(tmpdir(), 'bench-disks-'));
const path = join(dir, 'work.ext4');

async function timed(fn: () => Promise<void>): Promise<{ ms: number; hostMib: number }> {
  rmSync(path, { force: true });
  const t = process.hrtime.bigint();
  await fn();
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  return { ms, hostMib: (statSync(path).blocks * 512) / 2 ** 20 };
}

try {
  const vmAt = (size: string) => {
    const ms: number[] = [];
    const hostMib: number[] = [];
    for (let i = 0; i < runs; i++) {
      const name = `bench-disk-${size.toLowerCase()}`;
      ms.push(timeIt(() => banger(['vm', 'create', '--name', name, '--disk-size', size])));
      const v = JSON.parse(banger(['vm', 'show', name, '--json'])) as { disks: { id: string; hostBytes: number }[] };
      hostMib.push(v.disks.find((d) => d.id === 'work')!.hostBytes / 2 ** 20);
      banger(['vm', 'delete', name]);
    }
    return { ms, hostMib };
  };
  vmAt('1G'); // the image exists (built on first use) and the daemon runs
  const vm1 = vmAt('1G');
  const vm64 = vmAt('64G');
  report('vm create: --disk-size 64G vs --disk-size 1G', vm64.ms, vm1.ms, '--disk-size 1G');
  process.stdout.write(`  work disk host use: 64G ${median(vm64.hostMib).toFixed(1)} MiB, 1G ${median(vm1.hostMib).toFixed(1)} MiB\n`);

  const at = async (mib: number) => {
    const r: { ms: number; hostMib: number }[] = [];
    for (let i = 0; i < runs; i++) r.push(await timed(() => makeWorkDisk(runCommand, path, mib)));
    return r;
  };
  await at(1024); // warm the page cache and the binaries
  const small = await at(1024);
  const big = await at(64 * 1024);
  const plain = await timed(async () => {
    sh('truncate', ['-s', '64G', path]);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'work', '-E', 'root_owner=0:0', path]);
  });
  report('work disk maker alone: 64G vs 1G', big.map((r) => r.ms), small.map((r) => r.ms), '1G');
  process.stdout.write(
    `  host use: 64G ${median(big.map((r) => r.hostMib)).toFixed(1)} MiB, 1G ${median(small.map((r) => r.hostMib)).toFixed(1)} MiB;` +
      ` plain mkfs.ext4 at 64G ${plain.hostMib.toFixed(1)} MiB in ${plain.ms.toFixed(0)} ms\n`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
