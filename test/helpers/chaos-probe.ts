/**
 * What chaos and cycle runs observe on the host: the CLI as a killable child, bangerd's pid, the QEMU
 * processes of a state directory, the records in state.db (read-only), and resource figures of a process.
 * Read-only towards banger: nothing here changes a record or a file.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { CLI, banger } from './cli.js';
import { consoleTail } from './diagnostics.js';

/** A CLI call running in the background, so the daemon can be killed while it is in flight. */
export interface BackgroundCli {
  child: ChildProcess;
  startedAt: number;
  /** Resolves with the exit code (128 + signal number when killed) and the output. */
  done: Promise<{ code: number; stdout: string; stderr: string; endedAt: number }>;
  exited: () => boolean;
}

export function spawnCli(home: string, args: string[]): BackgroundCli {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, BANGER_HOME: home, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let hasExited = false;
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<{ code: number; stdout: string; stderr: string; endedAt: number }>((resolve) => {
    child.on('error', (e) => {
      hasExited = true;
      resolve({ code: 1, stdout, stderr: stderr + String(e), endedAt: Date.now() });
    });
    child.on('close', (code, sig) => {
      hasExited = true;
      resolve({ code: code ?? (sig ? 128 + 9 : 1), stdout, stderr, endedAt: Date.now() });
    });
  });
  return { child, startedAt: Date.now(), done, exited: () => hasExited };
}

/** bangerd's pid as the daemon itself reports it (starting the daemon when it is not running). */
export async function daemonPid(home: string): Promise<number> {
  let r = await banger(['daemon', 'status', '--json'], { home, timeoutMs: 60_000 });
  if (r.code !== 0) {
    await banger(['daemon', 'start'], { home, timeoutMs: 60_000 });
    r = await banger(['daemon', 'status', '--json'], { home, timeoutMs: 60_000 });
  }
  if (r.code !== 0) throw new Error(`banger daemon status failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { pid: number }).pid;
}

function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** True while the process exists and is not a zombie. */
export function alive(pid: number): boolean {
  const s = procState(pid);
  return s !== undefined && s !== 'Z';
}

/** SIGKILL and wait (up to 5 s) until the process is gone. */
export async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
}

/** A QEMU process started from this state directory, with the VM id its argv names. */
export interface VmmProcess {
  pid: number;
  vmId: string | undefined;
}

export function qemuProcesses(home: string, onlyVmId?: string): VmmProcess[] {
  const marker = join(home, 'vms') + '/';
  const out: VmmProcess[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (!/qemu-system/.test(argv[0] ?? '') || !argv.some((a) => a.includes(marker))) continue;
    if (!alive(Number(e))) continue;
    const joined = argv.join(' ');
    const id = /guest=banger-([0-9a-z]+)/.exec(joined)?.[1] ?? new RegExp(`${marker}([^/ ]+)/`).exec(joined)?.[1];
    if (onlyVmId !== undefined && id !== onlyVmId) continue;
    out.push({ pid: Number(e), vmId: id });
  }
  return out;
}

export interface VmRow {
  id: string;
  name: string;
  state: string;
}

/** The VM records and `pragma integrity_check`, read straight from state.db without the daemon. */
export function readStateDb(home: string): { rows: VmRow[]; integrity: string } {
  const db = new Database(join(home, 'state.db'), { readonly: true, fileMustExist: true });
  try {
    const integrity = (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; ');
    const rows = db.prepare('SELECT id, name, state FROM vms').all() as VmRow[];
    return { rows, integrity };
  } finally {
    db.close();
  }
}

/** Entries of $BANGER_HOME/vms. */
export function vmDirs(home: string): string[] {
  const dir = join(home, 'vms');
  return existsSync(dir) ? readdirSync(dir) : [];
}

/** A VM's console for a failure report: through `banger vm logs` when it has a record, else from disk. */
export async function vmConsole(home: string, vm: { id?: string; name?: string }, bytes = 3000): Promise<string> {
  if (vm.name !== undefined) {
    const r = await banger(['vm', 'logs', vm.name, '--bytes', String(bytes)], { home, timeoutMs: 30_000 });
    if (r.code === 0) return r.stdout;
  }
  return vm.id !== undefined ? consoleTail(home, vm.id, bytes) : '(no console: VM unknown)';
}

/** Resident memory (bytes) and open file descriptors of a process. */
export function processFigures(pid: number): { rssBytes: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? NaN);
  return { rssBytes: kb * 1024, fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** `du` of some paths in bytes: apparent size (`du -sb`) and what is allocated on disk (`du -s -B1`). */
export function diskUse(paths: string[]): { apparentBytes: number; allocatedBytes: number } {
  const existing = paths.filter((p) => existsSync(p));
  if (existing.length === 0) return { apparentBytes: 0, allocatedBytes: 0 };
  const sum = (args: string[]) => {
    const r = spawnSync('du', [...args, '-c', ...existing], { encoding: 'utf8' });
    const total = /^(\d+)\s+total$/m.exec(r.stdout ?? '');
    return total ? Number(total[1]) : NaN;
  };
  return { apparentBytes: sum(['-sb']), allocatedBytes: sum(['-s', '-B1']) };
}
