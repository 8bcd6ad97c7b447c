import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/shared/config.js';

export const REPO = resolve(fileURLToPath(import.meta.url), '..', '..');
export const CLI = join(REPO, 'dist', 'banger.js');
export const HOME = process.env.BANGER_HOME ?? '/var/cache/banger-test/e2e-home';

export function timeIt(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}) {
  const r = spawnSync(cmd, args, { env: { ...process.env, ...opts.env }, input: opts.input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Runs the CLI as a user's shell does: the file itself, through its #! line (not `node dist/banger.js`). */
export function banger(args: string[]): string {
  return sh(CLI, args, { env: { BANGER_HOME: HOME } });
}

/** `banger(args)` without blocking, for commands run side by side; rejects when it fails. */
export function bangerAsync(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(CLI, args, { env: { ...process.env, BANGER_HOME: HOME }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.once('error', reject);
    c.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`banger ${args.join(' ')} failed (${code}): ${err}`))));
  });
}

/** `banger(args)` for cleanup, where failing (the VM or snapshot is not there) is fine. */
export function quiet(args: string[]): void {
  try {
    banger(args);
  } catch {
    /* not there */
  }
}

export function report(name: string, bangerMs: number[], baselineMs: number[], baselineName: string): void {
  const b = median(bangerMs);
  const base = median(baselineMs);
  const line = (n: string, xs: number[]) => `  ${n.padEnd(34)} median ${median(xs).toFixed(0).padStart(6)} ms  (n=${xs.length}: ${xs.map((x) => x.toFixed(0)).join(', ')})`;
  process.stdout.write(`${name}\n${line('banger', bangerMs)}\n${line(baselineName, baselineMs)}\n  ratio banger/baseline: ${(b / base).toFixed(2)}x\n`);
}

/**
 * A committed repo of `files` files totalling about `mib` MiB at `repo`, 1,000 per directory: base64 of random
 * bytes, text git stores as it is, about as large as its source when packed.
 */
export function makeBigRepo(repo: string, files: number, mib: number): void {
  process.stderr.write(`making a repo of ${files} files, ~${mib} MiB in ${repo}...\n`);
  const per = Math.max(1, Math.floor((mib * 1024 * 1024) / files));
  for (let i = 0; i < files; i++) {
    const dir = join(repo, `d${Math.floor(i / 1000)}`);
    if (i % 1000 === 0) mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `f${i}.txt`), randomBytes(Math.ceil((per * 3) / 4)).toString('base64').slice(0, per));
  }
  sh('git', ['-C', repo, 'init', '-q']);
  sh('git', ['-C', repo, 'add', '-A']);
  sh('git', ['-C', repo, '-c', 'user.email=b@b', '-c', 'user.name=b', 'commit', '-q', '-m', 'big']);
}

/** The TCG code cache size the daemon of HOME gives a VM: its config.json's `qemu.tcgCacheMib`, or the default. */
export function tcgCacheMib(): number {
  return loadConfig(join(HOME, 'config.json')).qemu.tcgCacheMib;
}

/**
 * PSS of process `pid` in MiB (its memory, with pages shared with other processes split among them), and the part
 * of it that is TCG's translated code: QEMU's anonymous code buffer of `cacheMib` MiB, which a KVM VM does not have.
 */
export function pssMib(pid: number, cacheMib: number): { total: number; tcgCode: number } {
  let total = 0;
  let tcgCode = 0;
  let inCodeBuffer = false;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      const size = parseInt(head[2]!, 16) - parseInt(head[1]!, 16);
      inCodeBuffer = head[3]!.trim() === '' && Math.abs(size - cacheMib * 2 ** 20) <= 2 ** 20;
      continue;
    }
    const pss = /^Pss:\s+(\d+) kB/.exec(line);
    if (!pss) continue;
    total += Number(pss[1]) / 1024;
    if (inCodeBuffer) tcgCode += Number(pss[1]) / 1024;
  }
  return { total, tcgCode };
}

/**
 * Waits until the VM's guest agent answers (`vm stats` answers only through it): Node takes seconds to start
 * under TCG, and on a loaded host its first hello can miss its deadline, so this keeps asking for two minutes.
 */
export async function agentUp(vm: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      banger(['vm', 'stats', vm]);
      return;
    } catch (e) {
      if (i >= 240) throw e;
      await sleep(500);
    }
  }
}
