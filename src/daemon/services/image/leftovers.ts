/**
 * Removing what an image build leaves on disk when it fails, is cancelled, or dies with the daemon.
 *
 * A build directory can hold more than files: mmdebstrap's children (apt, dpkg, maintainer scripts
 * chrooted into the tree) outlive a killed mmdebstrap, and a killed mmdebstrap can leave /proc, /sys or
 * /dev bind mounts inside its tree. A plain `rm -rf` would then walk into the host's own /dev or /sys,
 * so the order is fixed: kill every process using the directory (and their descendants), unmount
 * everything mounted under it (deepest first, lazily as a last resort), check that nothing is mounted
 * there any more, and only then remove it.
 *
 * The host is reached through {@link LeftoverHost} so tests can inject a process list and mount table.
 */
import { readdir, readFile, readlink, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { Logger } from '../../../shared/logger.js';

export interface ProcessInfo {
  pid: number;
  ppid: number;
  /** Target of /proc/PID/root (a chrooted process's root), when readable. */
  root?: string;
  /** Target of /proc/PID/cwd, when readable. */
  cwd?: string;
  argv: string[];
  /** Exited but not reaped: holds no directory or mount any more. */
  zombie: boolean;
}

export interface LeftoverHost {
  /** /proc/self/mountinfo. */
  mountinfo(): Promise<string>;
  processes(): Promise<ProcessInfo[]>;
  /** SIGKILL; a process that is already gone is not an error. */
  kill(pid: number): void;
  run: CommandRunner;
  /** Removes the directory tree (called only once nothing is mounted under it). */
  remove(dir: string): Promise<void>;
  sleep(ms: number): Promise<void>;
}

/** What cleanup reports through: the daemon's logger (only these two levels are used). */
export type LeftoverLog = Pick<Logger, 'info' | 'warn'>;

const inside = (base: string, p: string | undefined) => p !== undefined && (p === base || p.startsWith(base + '/'));

/** Mount points at or under `dir`, deepest first, from /proc/self/mountinfo text. */
export function mountsUnder(mountinfo: string, dir: string): string[] {
  const base = resolve(dir);
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return mountinfo
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m)
    .map(unescape)
    .filter((m) => inside(base, m))
    .sort((a, b) => b.length - a.length);
}

/**
 * Pids to kill for `dir`: live processes whose root or working directory is inside it or whose
 * command line names a path inside it, plus all their descendants (apt's download methods, dpkg's
 * maintainer scripts). Never `selfPid`.
 */
export function processesUsing(procs: readonly ProcessInfo[], dir: string, selfPid: number): number[] {
  const base = resolve(dir);
  const namesPath = (arg: string) => arg.split(/[=:,]/).some((part) => inside(base, part)) || arg.includes(base + '/');
  const live = procs.filter((p) => !p.zombie && p.pid !== selfPid);
  const victims = new Set(
    live.filter((p) => inside(base, p.root) || inside(base, p.cwd) || p.argv.some(namesPath)).map((p) => p.pid),
  );
  for (let grew = true; grew;) {
    grew = false;
    for (const p of live)
      if (!victims.has(p.pid) && victims.has(p.ppid)) {
        victims.add(p.pid);
        grew = true;
      }
  }
  return [...victims].sort((a, b) => a - b);
}

/** Kills, unmounts and removes a build directory (see the module comment). Throws when it cannot. */
export async function removeBuildLeftovers(
  dir: string,
  host: LeftoverHost,
  log: LeftoverLog,
  signal?: AbortSignal,
): Promise<void> {
  const base = resolve(dir);
  // Killing a parent can let a child it was about to fork slip through: look again until none is left.
  let victims: number[] = [];
  for (let round = 0; round < 5; round++) {
    victims = processesUsing(await host.processes(), base, process.pid);
    if (victims.length === 0) break;
    log.info({ dir: base, pids: victims }, 'killing processes left in an image build directory');
    for (const pid of victims) host.kill(pid);
    for (let i = 0; i < 50; i++) {
      signal?.throwIfAborted();
      const live = new Set((await host.processes()).filter((p) => !p.zombie).map((p) => p.pid));
      if (!victims.some((v) => live.has(v))) break;
      await host.sleep(100);
    }
  }
  if (processesUsing(await host.processes(), base, process.pid).length > 0)
    throw new BangerError(ErrorCode.Internal, `processes ${victims.join(', ')} still use ${base} after SIGKILL`, {
      hint: `stop them by hand (\`fuser -vm ${base}\`), then restart bangerd`,
    });

  for (const m of mountsUnder(await host.mountinfo(), base)) {
    const r = await host.run('umount', [m], { allowFailure: true, signal });
    if (r.code === 0) continue;
    log.warn({ mount: m, err: r.stderr.trim() }, 'umount failed; detaching the mount lazily');
    await host.run('umount', ['-l', m], { allowFailure: true, signal });
  }
  const left = mountsUnder(await host.mountinfo(), base);
  if (left.length > 0)
    throw new BangerError(ErrorCode.FailedPrecondition, `cannot unmount ${left.join(', ')}`, {
      hint: `unmount them by hand (\`umount -l PATH\`), then remove ${base}: never rm -rf it while something is mounted inside`,
    });
  await host.remove(base);
}

/**
 * The real host: /proc, process.kill, `umount` through `run`. `remove`: how a tree is removed (default a
 * recursive rm; a normal user's builds pass rootless.ts's, which can remove subordinate owners' files).
 */
export function procHost(run: CommandRunner, remove?: (dir: string) => Promise<void>): LeftoverHost {
  return {
    mountinfo: () => readFile('/proc/self/mountinfo', 'utf8'),
    processes: readProcesses,
    kill: (pid) => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
    run,
    remove: remove ?? ((dir) => rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 })),
    sleep: (ms) => sleep(ms),
  };
}

async function readProcesses(): Promise<ProcessInfo[]> {
  const out: ProcessInfo[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      // The command name in parentheses may hold spaces and ')': fields start after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const link = (what: string) => readlink(`/proc/${pid}/${what}`).catch(() => undefined);
      out.push({
        pid,
        ppid: Number(fields[1]),
        zombie: fields[0] === 'Z' || fields[0] === 'X',
        root: await link('root'),
        cwd: await link('cwd'),
        argv: (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean),
      });
    } catch {
      // exited while being read
    }
  }
  return out;
}
