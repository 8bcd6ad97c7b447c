/** bangerd: runs the daemon until SIGTERM, SIGINT or `banger daemon stop`. VMs outlive it. */
import net from 'node:net';
import { mkdirSync } from 'node:fs';
import { Paths } from '../shared/paths.js';
import { fileLogger } from '../shared/logger.js';
import { capLog, keepLogCapped } from '../shared/log-cap.js';
import { withSbinPath } from '../shared/command.js';
import { ErrorCode, isBangerError } from '../errors/index.js';
import { startDaemon, type RunningDaemon } from './daemon.js';

/** Size past which the daemon's log is rotated (it keeps one rotated copy, `bangerd.log.1`). */
const DAEMON_LOG_MAX_BYTES = 8 * 1024 * 1024;

/** True when another daemon already answers on the socket. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function main(): Promise<void> {
  // Every tool the daemon runs (mkfs.ext4 for work disks, doctor's checks...) is found with a normal user's PATH too.
  process.env.PATH = withSbinPath(process.env).PATH;
  const paths = Paths.fromEnv();
  mkdirSync(paths.root, { recursive: true, mode: 0o700 });
  if (await socketAnswers(paths.socket)) {
    process.stderr.write(`bangerd is already running on ${paths.socket}\n`);
    return;
  }
  // The log is appended to for the daemon's whole life: bounded at start and every minute after.
  await capLog(paths.daemonLog, DAEMON_LOG_MAX_BYTES);
  const log = fileLogger(paths.daemonLog);
  const logCap = new AbortController();
  keepLogCapped(paths.daemonLog, DAEMON_LOG_MAX_BYTES, 60_000, logCap.signal);
  const running: { daemon?: RunningDaemon } = {};
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'stop requested');
    void (async () => {
      await running.daemon?.stop();
      logCap.abort();
      log.flush();
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    running.daemon = await startDaemon({ paths, log, onStopRequest: () => stop('daemon.stop') });
  } catch (e) {
    // Started at the same moment as another daemon, which won: the client that started us connects to it.
    if (isBangerError(e) && e.code === ErrorCode.Conflict) {
      process.stderr.write(`bangerd is already running: ${e.message}\n`);
      log.flush();
      process.exit(0);
    }
    throw e;
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bangerd failed to start: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
