/**
 * Host-side memory of a full workspace import, without a VM: the real WorkspaceService.prepare, whose
 * "guest" is this host's /bin/sh running the real import script into a temporary directory (as the
 * workspace unit tests do). Makes (or reuses, with --repo) a committed repo of FILES files totalling
 * about MIB MiB, then samples this process's RSS and heap every 100 ms during the import and reads the
 * kernel's peak RSS (VmHWM, reset after idle), and prints idle, peak and growth.
 * It runs under bangerd's V8 flags (launcher.ts DAEMON_NODE_FLAGS), starting itself again with them when they
 * are missing: they decide what the heap keeps (here, without them, the RSS grew by 91.5 MiB, with them 40.9).
 * Usage: node --expose-gc --import tsx bench/import-memory-local.ts [--files 100000] [--mib 1024]
 *        [--repo DIR (kept; made when missing)] [--snapshot DIR (a heap snapshot at half the files)] [--timeline (a line a second)]
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeHeapSnapshot } from 'node:v8';
import type { ProgressEvent } from '../src/protocol/common.js';
import { localWorkspaceService } from '../test/helpers/local-session.js';
import { makeBigRepo } from './common.js';
import { DAEMON_NODE_FLAGS } from '../src/client/launcher.js';

if (!DAEMON_NODE_FLAGS.every((f) => process.execArgv.includes(f))) {
  const again = spawnSync(process.execPath, [...DAEMON_NODE_FLAGS, ...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(again.status ?? 1);
}

const { values } = parseArgs({
  options: {
    files: { type: 'string', default: '100000' },
    mib: { type: 'string', default: '1024' },
    repo: { type: 'string' },
    snapshot: { type: 'string' },
    timeline: { type: 'boolean', default: false },
  },
});
const files = Number(values.files);
const mib = Number(values.mib);

function status(key: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function makeRepo(repo: string): void {
  makeBigRepo(repo, files, mib);
}

const scratch = mkdtempSync(join(tmpdir(), 'banger-mem-local-'));
const repo = values.repo ?? join(scratch, 'big');
if (!existsSync(join(repo, '.git'))) makeRepo(repo);

const vmDir = join(scratch, 'vm');
mkdirSync(vmDir);
const { svc } = localWorkspaceService(vmDir);

const mb = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
const gc = (globalThis as { gc?: () => void }).gc;
try {
  gc?.();
  await new Promise((r) => setTimeout(r, 1000));
  gc?.();
  const idle = status('VmRSS');
  const idleHeap = process.memoryUsage();
  writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
  const started = Date.now();
  const timeline: string[] = [];
  let lastEvent = 'start';
  let tick = 0;
  let peak = { rss: idle, heapUsed: idleHeap.heapUsed, external: idleHeap.external, arrayBuffers: idleHeap.arrayBuffers };
  const timer = setInterval(() => {
    const m = process.memoryUsage();
    peak = {
      rss: Math.max(peak.rss, m.rss),
      heapUsed: Math.max(peak.heapUsed, m.heapUsed),
      external: Math.max(peak.external, m.external),
      arrayBuffers: Math.max(peak.arrayBuffers, m.arrayBuffers),
    };
    if (values.timeline && tick++ % 10 === 0)
      timeline.push(`${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s rss ${mb(m.rss)} heapTotal ${mb(m.heapTotal)} heap ${mb(m.heapUsed)} ext ${mb(m.external)} ${lastEvent}`);
  }, 100);
  let snapped = false;
  const r = await svc.prepare({ name: 'vm', sourcePath: repo, guestPath: join(scratch, 'guest', 'big') }, (ev: ProgressEvent) => {
    if (ev.kind === 'notice') process.stderr.write(`notice: ${ev.message}\n`);
    if (ev.kind === 'bytes') lastEvent = `${ev.files ?? 0} files ${mb(ev.done)}`;
    if (values.snapshot && !snapped && 'files' in ev && typeof ev.files === 'number' && ev.files >= files / 2) {
      snapped = true;
      process.stderr.write(`heap snapshot: ${writeHeapSnapshot(join(values.snapshot, `import-${Date.now()}.heapsnapshot`))}\n`);
    }
  });
  clearInterval(timer);
  const seconds = (Date.now() - started) / 1000;
  const hwm = status('VmHWM');
  if (values.timeline) process.stdout.write(`${timeline.join('\n')}\n`);
  process.stdout.write(
    `local import of ${files} files / ~${mib} MiB: ${r.files} files, ${mb(r.bytes)}, mode ${r.mode}, ${seconds.toFixed(1)} s\n` +
      `  RSS: idle ${mb(idle)}, peak ${mb(Math.max(hwm, peak.rss))} (sampled ${mb(peak.rss)}, VmHWM ${mb(hwm)}), growth ${mb(Math.max(hwm, peak.rss) - idle)} (budget 64 MiB)\n` +
      `  heapUsed: idle ${mb(idleHeap.heapUsed)}, peak ${mb(peak.heapUsed)}; external: idle ${mb(idleHeap.external)}, peak ${mb(peak.external)}; arrayBuffers: idle ${mb(idleHeap.arrayBuffers)}, peak ${mb(peak.arrayBuffers)}\n`,
  );
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
