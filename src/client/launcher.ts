import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, existsSync } from 'node:fs';
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

/** Waits until process `pid` is gone (a stopped daemon exits once its requests are done). */
async function waitForExit(pid: number, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    if (Date.now() > end)
      throw new BangerError(ErrorCode.Unavailable, `bangerd (pid ${pid}) of another build did not stop`, {
        hint: 'stop it with `banger daemon stop` (VMs keep running), then try again',
      });
    await sleep(50);
  }
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
  await waitForExit(s.pid, timeoutMs);
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
