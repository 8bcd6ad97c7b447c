/**
 * Runs the built `banger` CLI (dist/banger.js) against a test state directory, like a user would.
 * e2e tests share one BANGER_HOME under the test cache so the guest image is built once per machine;
 * every VM a test makes is deleted by the test (and what a killed run left by `e2e-reset.ts`, before the tier).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { it, type TestContext } from 'node:test';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dumpConsoles } from './diagnostics.js';

export const REPO_ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
export const CLI = join(REPO_ROOT, 'dist', 'banger.js');
export const E2E_HOME = process.env.BANGER_E2E_HOME ?? '/var/cache/banger-test/e2e-home';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function banger(
  args: string[],
  opts: { home?: string; input?: string | Buffer; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CliResult> {
  return bangerChild(args, opts).result;
}

/** banger as a child the test can signal while it runs (Ctrl-C, kill -9), and its result. */
export function bangerChild(
  args: string[],
  opts: { home?: string; input?: string | Buffer; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): { child: ChildProcess; result: Promise<CliResult> } {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...opts.env, BANGER_HOME: opts.home ?? E2E_HOME, NO_COLOR: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const result = new Promise<CliResult>((resolvePromise, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    child.on('error', reject);
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? (sig ? 128 + (osConstants.signals[sig] ?? 9) : 1), stdout, stderr });
    });
    child.stdin!.end(opts.input ?? '');
  });
  return { child, result };
}

/** Runs banger and fails with its output when the exit code is not `want`. */
export async function bangerOk(args: string[], want = 0, opts: Parameters<typeof banger>[1] = {}): Promise<CliResult> {
  const r = await banger(args, opts);
  if (r.code !== want)
    throw new Error(
      `banger ${args.join(' ')} exited ${r.code}, expected ${want}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`,
    );
  return r;
}

/** PIDs of processes whose command line contains `needle`. */
export function pidsMatching(needle: string): number[] {
  const pids: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'Z' && cmd.includes(needle) && Number(e) !== process.pid) pids.push(Number(e));
    } catch {
      /* raced with exit */
    }
  }
  return pids;
}

/**
 * Steps of an e2e suite that share VMs: each is an `it`. A step that failed, or that never finished (cancelled
 * when its suite timed out), is remembered, so the suite's after() prints the VMs' consoles and the daemon
 * log's tail (`printConsolesIfFailed`).
 */
export function e2eSteps(home = E2E_HOME) {
  let failed = false;
  let unfinished: string | undefined;
  const step = (name: string, fn: (t: TestContext) => Promise<void>): void =>
    void it(name, async (t) => {
      unfinished = name;
      try {
        await fn(t);
      } catch (e) {
        failed = true;
        throw e;
      } finally {
        unfinished = undefined;
      }
    });
  const printConsolesIfFailed = () => {
    if (unfinished !== undefined) process.stderr.write(`\nthe step '${unfinished}' did not finish (timed out or cancelled)\n`);
    if (failed || unfinished !== undefined) dumpConsoles(home);
  };
  return { step, printConsolesIfFailed };
}
