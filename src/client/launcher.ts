import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../errors/index.js';
import { DaemonMethods } from '../protocol/daemon.js';
import { Paths } from '../shared/paths.js';
import { BUILD_ID } from '../shared/version.js';
import { stateAccessError } from './state-access.js';
import { BangerClient } from './client.js';
import { servedByThisBuild } from './daemon-build.js';

/**
 * V8 flags of bangerd, for flat memory during long streams (bench/import-memory-local.ts, a 100,000-file /
 * 1 GiB import, RSS growth over idle): a young generation of 1 MiB semi-spaces (Node's default is 16 MiB)
 * frees a stream's short-lived buffers as it goes, and `--optimize-for-size` grows the old generation in
 * smaller steps, so the garbage an import's planning leaves (its per-file lists) is collected instead of
 * kept as heap. Default: 74 MiB; semi-spaces only: 49 and 70 MiB; both: 41 and 41 MiB.
 */
export const DAEMON_NODE_FLAGS = ['--max-semi-space-size=1', '--optimize-for-size'] as const;

/** How to start bangerd: the bundled dist/bangerd.js next to dist/banger.js, or the TS source under tsx. */
export function daemonCommand(): { cmd: string; args: string[] } {
  const here = dirname(fileURLToPath(import.meta.url));
  const bundled = join(here, 'bangerd.js');
  if (existsSync(bundled)) return { cmd: process.execPath, args: [...DAEMON_NODE_FLAGS, bundled] };
  const source = join(here, '..', 'daemon', 'main.ts');
  return { cmd: process.execPath, args: [...DAEMON_NODE_FLAGS, '--import', 'tsx', source] };
}

function isNotRunning(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/** Waits up to `timeoutMs` for process `pid` to be gone; true when it is. */
async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    if (Date.now() > end) return false;
    await sleep(50);
  }
}

/** The pid in bangerd.pid when that process is a bangerd (not a pid reused since), else undefined. */
export async function daemonPid(paths: Paths): Promise<number | undefined> {
  const pid = Number((await readFile(paths.daemonPidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmd.includes('bangerd') ? pid : undefined;
}

/**
 * Ends a daemon that does not answer: SIGTERM, then SIGKILL after 3 s (a daemon whose event loop is stuck never
 * runs its SIGTERM handler). Resolves once the process is gone; it leaves its socket file, which the next daemon
 * replaces. Its VMs run on.
 */
export async function endHungDaemon(pid: number): Promise<void> {
  for (const [sig, waitMs] of [['SIGTERM', 3000], ['SIGKILL', 5000]] as const) {
    try {
      process.kill(pid, sig);
    } catch {
      return; // gone already
    }
    if (await waitForExit(pid, waitMs)) return;
  }
  throw new BangerError(ErrorCode.DeadlineExceeded, `bangerd (pid ${pid}) survived SIGKILL`, {
    hint: `check \`ps -o pid,stat,cmd -p ${pid}\`; a process stuck in the kernel (state D) ends only when the kernel lets it`,
  });
}

/**
 * A daemon of another build of banger (an upgrade, a rebuilt checkout) speaks an older protocol: when it
 * serves nobody else it is restarted (VMs outlive it); when it is busy, `onNotice` says so and it is used.
 * True when it was stopped.
 */
async function retireOtherBuild(
  client: BangerClient,
  paths: Paths,
  timeoutMs: number,
  onNotice?: (message: string) => void,
): Promise<boolean> {
  if (BUILD_ID === 'source' || servedByThisBuild(paths)) return false;
  const s = await client.call(DaemonMethods.status, undefined).catch(() => undefined);
  if (!s || s.build === BUILD_ID) return false;
  if ((s.connections ?? 1) > 1) {
    onNotice?.(
      `bangerd (pid ${s.pid}) runs another build of banger and is busy; once its work is done, restart it with \`banger daemon stop\` (VMs keep running)`,
    );
    return false;
  }
  onNotice?.(`restarting bangerd: it runs another build of banger (VMs keep running)`);
  // A stopping daemon may close the connection before its reply arrives; its exit is what counts.
  await client.call(DaemonMethods.stop, undefined).catch(() => undefined);
  client.close();
  if (!(await waitForExit(s.pid, timeoutMs)))
    throw new BangerError(ErrorCode.Unavailable, `bangerd (pid ${s.pid}) of another build did not stop`, {
      hint: 'stop it with `banger daemon stop` (VMs keep running), then try again',
    });
  return true;
}

/**
 * Connects to bangerd, starting it (detached, logging to its log file) when it is not running, and
 * restarting an idle one of another build. `onStart` is told when a daemon had to be started.
 */
export async function connectOrStart(
  paths: Paths,
  onStart?: () => void,
  timeoutMs = 15_000,
  onNotice?: (message: string) => void,
): Promise<BangerClient> {
  try {
    return await connectOrStartDaemon(paths, onStart, timeoutMs, onNotice);
  } catch (e) {
    throw stateAccessError(e, paths.socket) ?? e;
  }
}

async function connectOrStartDaemon(
  paths: Paths,
  onStart: (() => void) | undefined,
  timeoutMs: number,
  onNotice: ((message: string) => void) | undefined,
): Promise<BangerClient> {
  try {
    const client = await BangerClient.connect(paths.socket);
    if (!(await retireOtherBuild(client, paths, timeoutMs, onNotice))) return client;
  } catch (e) {
    if (!isNotRunning(e)) throw e;
  }
  onStart?.();
  mkdirSync(paths.logsDir, { recursive: true, mode: 0o700 });
  const out = openSync(join(paths.logsDir, 'bangerd.stderr.log'), 'a', 0o600);
  const { cmd, args } = daemonCommand();
  const child = spawn(cmd, args, {
    detached: true,
    stdio: ['ignore', out, out],
    env: { ...process.env, BANGER_HOME: paths.root },
  });
  closeSync(out);
  let exited: number | null = null;
  child.once('exit', (code) => (exited = code ?? 1));
  child.unref();
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await BangerClient.connect(paths.socket);
    } catch (e) {
      if (!isNotRunning(e)) throw e;
    }
    // Exit 0: another daemon, started at the same moment, holds the state directory; it answers shortly.
    if ((exited !== null && exited !== 0) || Date.now() > end)
      throw new BangerError(ErrorCode.Unavailable, `bangerd did not start${exited !== null ? ` (exit ${exited})` : ''}`, {
        hint: `see ${join(paths.logsDir, 'bangerd.stderr.log')} and \`banger daemon logs\``,
      });
    await sleep(50);
  }
}
