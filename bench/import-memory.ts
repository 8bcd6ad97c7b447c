/**
 * Daemon memory during a large workspace import (issue 9: "a 100,000-file / 1 GiB repo imports with daemon
 * RSS growing by at most 64 MiB over idle"). Makes a committed repo of FILES files totalling about MIB MiB
 * (text, mostly incompressible), boots a VM with a work disk that holds it, samples bangerd's RSS (VmRSS)
 * every 100 ms while `vm workspace prepare` runs, and prints idle, peak and growth, with the import's time.
 * Usage: npm run build && node --import tsx bench/import-memory.ts [--files 100000] [--mib 1024]
 * State directory: BANGER_HOME, else the e2e tier's. The VM and the repo are deleted at the end.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CLI, HOME, banger, makeBigRepo } from './common.js';

const { values } = parseArgs({ options: { files: { type: 'string', default: '100000' }, mib: { type: 'string', default: '1024' } } });
const files = Number(values.files);
const mib = Number(values.mib);
const VM = 'bench-import-mem';

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

const repo = join(mkdtempSync(join(tmpdir(), 'banger-bench-mem-')), 'big');
try {
  makeBigRepo(repo, files, mib);
  const diskGib = Math.ceil((mib * 3) / 1024) + 2;
  spawnSyncOk(['vm', 'delete', '--force', VM], true);
  banger(['vm', 'create', '--name', VM, '--start', '--disk-size', `${diskGib}G`]);
  const pid = Number(readFileSync(join(HOME, 'bangerd.pid'), 'utf8').trim());
  await new Promise((r) => setTimeout(r, 3000));
  const idle = rssKiB(pid);
  let peak = idle;
  const timer = setInterval(() => (peak = Math.max(peak, rssKiB(pid))), 100);
  const started = Date.now();
  const code = await new Promise<number | null>((resolve) => {
    const p = spawn(CLI, ['vm', 'workspace', 'prepare', VM, repo], {
      env: { ...process.env, BANGER_HOME: HOME },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    p.on('close', resolve);
  });
  clearInterval(timer);
  const seconds = (Date.now() - started) / 1000;
  const count = banger(['vm', 'exec', VM, '--', 'sh', '-c', `cd /root/big && git ls-files | wc -l && git status --porcelain | wc -l`]).trim().split('\n');
  process.stdout.write(
    `import of ${files} files / ~${mib} MiB: exit ${code}, ${seconds.toFixed(1)} s; guest has ${count[0]} tracked files, ${count[1]} status lines\n` +
      `  bangerd RSS: idle ${(idle / 1024).toFixed(1)} MiB, peak ${(peak / 1024).toFixed(1)} MiB, growth ${((peak - idle) / 1024).toFixed(1)} MiB (budget 64 MiB)\n`,
  );
  process.exitCode = code === 0 ? 0 : 1;
} finally {
  spawnSyncOk(['vm', 'delete', '--force', VM], true);
  rmSync(join(repo, '..'), { recursive: true, force: true });
}

function spawnSyncOk(args: string[], ignoreFailure: boolean): void {
  try {
    banger(args);
  } catch (e) {
    if (!ignoreFailure) throw e;
  }
}
