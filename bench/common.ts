import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

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

export function banger(args: string[]): string {
  return sh(process.execPath, [CLI, ...args], { env: { BANGER_HOME: HOME } });
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
