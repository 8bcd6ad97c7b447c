/**
 * What an e2e failure prints about a state directory, read from disk and /proc so that it works when the
 * daemon is down or answers nothing: VM consoles, the daemon log's tail, and what each daemon thread waits in.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** The tail of a VM's console log straight from disk (works when the daemon is down). */
export function consoleTail(home: string, vmId: string, bytes = 4000): string {
  const p = join(home, 'vms', vmId, 'console.log');
  if (!existsSync(p)) return '(no console log)';
  const s = readFileSync(p, 'utf8');
  return s.slice(-bytes);
}

/**
 * The last `lines` entries of the daemon's log in `home`, one short line each (time, level, message, and the
 * method, VM, milliseconds and error message where present): readable when the daemon is down or wedged.
 */
export function daemonLogTail(home: string, lines = 40): string {
  const p = join(home, 'logs', 'bangerd.log');
  if (!existsSync(p)) return '(no daemon log)';
  const LEVELS: Record<number, string> = { 20: 'debug', 30: 'info', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
  const short = (l: string): string => {
    try {
      const e = JSON.parse(l) as { time: number; level: number; msg: string; method?: string; vm?: string; ms?: unknown; err?: { message?: string } };
      const extra = [e.method, e.vm && `vm=${e.vm}`, e.ms !== undefined && `ms=${JSON.stringify(e.ms)}`, e.err?.message && e.err.message !== e.msg && `err=${e.err.message}`];
      return [new Date(e.time).toISOString().slice(11, 23), LEVELS[e.level] ?? e.level, e.msg, ...extra.filter(Boolean)].join(' ');
    } catch {
      return l.slice(0, 300);
    }
  };
  const text = readFileSync(p, 'utf8').slice(-512 * 1024);
  return text.split('\n').filter(Boolean).slice(-lines).map(short).join('\n');
}

const SYSCALLS: Record<string, string> = {
  '0': 'read', '1': 'write', '7': 'poll', '17': 'pread64', '18': 'pwrite64', '23': 'select', '35': 'nanosleep', '61': 'wait4',
  '202': 'futex', '230': 'clock_nanosleep', '232': 'epoll_wait', '257': 'openat', '271': 'ppoll', '281': 'epoll_pwait', '318': 'getrandom',
};

/**
 * What the daemon of `home` is doing, from /proc (works when it answers nothing): per thread its state, the
 * kernel function it waits in, its system call and CPU seconds. A blocked event loop shows as the main thread
 * stuck outside epoll_wait; a starved thread pool as its workers stuck in one call.
 */
export function daemonThreads(home: string): string {
  let pid: number;
  try {
    pid = Number(readFileSync(join(home, 'bangerd.pid'), 'utf8').trim());
  } catch {
    return '(no daemon pid file)';
  }
  const hz = 100;
  const rows: string[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const t = `/proc/${pid}/task/${tid}`;
      const read = (f: string) => {
        try {
          return readFileSync(`${t}/${f}`, 'utf8').trim();
        } catch {
          return '?';
        }
      };
      const stat = read('stat');
      const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cpu = (Number(after[11]) + Number(after[12])) / hz;
      const sc = read('syscall').split(' ')[0] ?? '?';
      rows.push(`${tid} ${read('comm')} ${after[0]} wchan=${read('wchan')} syscall=${SYSCALLS[sc] ?? sc} cpu=${cpu.toFixed(1)}s`);
    }
  } catch {
    return `(daemon pid ${pid} is not running)`;
  }
  return [`daemon pid ${pid}:`, ...rows, ...nativeStacks(pid)].join('\n');
}

/**
 * Each thread's native stack (gdb, where installed), function names only, identical stacks printed once with
 * their count: enough to tell a lock, a system call or the event loop's own wait apart.
 */
function nativeStacks(pid: number): string[] {
  const r = spawnSync('gdb', ['-p', String(pid), '-batch', '-nx', '-ex', 'thread apply all bt 16'], { encoding: 'utf8', timeout: 60_000 });
  if (r.error || typeof r.stdout !== 'string') return ['(no native stacks: gdb is not installed or did not attach)'];
  const stacks = new Map<string, number>();
  let cur: string[] | null = null;
  const flush = () => {
    const key = cur?.join(' < ');
    if (key !== undefined) stacks.set(key, (stacks.get(key) ?? 0) + 1);
  };
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('Thread ')) {
      flush();
      cur = [];
    } else if (cur && /^#\d+ /.test(line)) cur.push(line.replace(/^#\d+\s+(0x[0-9a-f]+ in )?/, '').split('(')[0]!.trim() || '?');
  }
  flush();
  return ['native stacks (innermost first):', ...[...stacks].map(([st, n]) => `${n}x ${st}`)];
}

/** Prints every VM's console tail and the daemon log's tail: called when an e2e test fails or times out. */
export function dumpConsoles(home: string): void {
  const dir = join(home, 'vms');
  if (existsSync(dir))
    for (const id of readdirSync(dir)) {
      process.stderr.write(`\n----- console of VM ${id} -----\n${consoleTail(home, id)}\n----- end -----\n`);
    }
  process.stderr.write(`\n----- the daemon log's tail (${home}) -----\n${daemonLogTail(home)}\n----- end -----\n`);
  process.stderr.write(`\n----- the daemon's threads -----\n${daemonThreads(home)}\n----- end -----\n`);
}
