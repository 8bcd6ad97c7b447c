/**
 * TCG's translated-code cache (config.json `qemu.tcgCacheMib`, QEMU's `tb-size`) against QEMU's own default of
 * 1 GiB, in one run on the same image: for each size, the daemon is restarted with it, then
 *  - a cold `vm run --no-pool --rm -- true`, `runs` times;
 *  - a VM (1 vCPU, 768 MiB) that runs a guest workload (node, git, apt-cache) `runs` times;
 *  - that VM's QEMU's PSS a minute after its boot, and the part of it that is the code cache.
 * Usage: npm run build && node --import tsx bench/tcg-cache.ts [sizes, default 1024,256,128,64] [runs, default 3]
 * Only meaningful where VMs run under TCG (software emulation). Restores the state directory's config.json.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HOME, banger, median, pssMib, quiet, timeIt } from './common.js';

const sizes = (process.argv[2] ?? '1024,256,128,64').split(',').map(Number);
const runs = Number(process.argv[3] ?? 3);
const VM = 'bench-tcg-cache';
const WORK = `node -e "JSON.stringify(require('fs').readdirSync('/usr/lib'))"; d=$(mktemp -d); git init -q "$d" && git -C "$d" status >/dev/null; apt-cache policy bash >/dev/null; rm -rf "$d"`;

const configPath = join(HOME, 'config.json');
const saved = existsSync(configPath) ? readFileSync(configPath, 'utf8') : null;
const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
try {
  for (const mib of sizes) {
    const config = saved ? (JSON.parse(saved) as Record<string, unknown>) : {};
    writeFileSync(configPath, JSON.stringify({ ...config, qemu: { tcgCacheMib: mib } }));
    quiet(['daemon', 'stop']);
    quiet(['vm', 'delete', '--force', VM]);
    const cold: number[] = [];
    for (let i = 0; i < runs; i++) cold.push(timeIt(() => banger(['vm', 'run', '--no-pool', '--rm', '--no-sync', '--', 'true'])));
    const booted = Date.now();
    banger(['vm', 'create', '--name', VM, '--start', '--no-pool', '--no-sync', '--cpus', '1', '--memory', '768M']);
    try {
      const work: number[] = [];
      for (let i = 0; i < runs; i++) work.push(timeIt(() => banger(['vm', 'exec', VM, '--', 'sh', '-c', WORK])));
      await sleep(Math.max(0, booted + 60_000 - Date.now()));
      const { pid } = JSON.parse(banger(['vm', 'show', VM, '--json'])) as { pid: number };
      const m = pssMib(pid, mib);
      process.stdout.write(
        `tcgCacheMib ${String(mib).padStart(4)}${mib === 1024 ? ' (QEMU default)' : '               '}` +
          `  cold run --rm -- true: median ${median(cold).toFixed(0)} ms (${list(cold)})` +
          `  workload: median ${median(work).toFixed(0)} ms (${list(work)})` +
          `  PSS after 1 min: ${m.total.toFixed(0)} MiB, ${m.tcgCode.toFixed(0)} MiB of it code\n`,
      );
    } finally {
      quiet(['vm', 'delete', '--force', VM]);
    }
  }
} finally {
  if (saved === null) rmSync(configPath, { force: true });
  else writeFileSync(configPath, saved);
  quiet(['daemon', 'stop']);
}
