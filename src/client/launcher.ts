import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode } from '../errors/index.js';
import { Paths } from '../shared/paths.js';
import { BangerClient } from './client.js';

/** How to start bangerd: the bundled dist/bangerd.js next to dist/banger.js, or the TS source under tsx. */
export function daemonCommand(): { cmd: string; args: string[] } {
  const here = dirname(fileURLToPath(import.meta.url));
  const bundled = join(here, 'bangerd.js');
  if (existsSync(bundled)) return { cmd: process.execPath, args: [bundled] };
  const source = join(here, '..', 'daemon', 'main.ts');
  return { cmd: process.execPath, args: ['--import', 'tsx', source] };
}

function isNotRunning(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/**
 * Connects to bangerd, starting it (detached, logging to its log file) when it is not running.
 * `onStart` is told when a daemon had to be started.
 */
export async function connectOrStart(paths: Paths, onStart?: () => void, timeoutMs = 15_000): Promise<BangerClient> {
  try {
    return await BangerClient.connect(paths.socket);
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
