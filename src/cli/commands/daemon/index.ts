import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { DaemonMethods } from '../../../protocol/daemon.js';
import { daemonPid, endHungDaemon } from '../../../client/launcher.js';
import { rotatedLog } from '../../../shared/log-cap.js';
import type { CliContext } from '../../context.js';
import { out } from '../../output.js';

/** How long `daemon stop` waits for the daemon's answer (it answers at once) before it ends the process. */
const STOP_ANSWER_MS = 15_000;

export function register(program: Command, ctx: CliContext): void {
  const daemon = program.command('daemon').description('the bangerd background service (started automatically)');

  daemon
    .command('status')
    .description('is bangerd running, and where')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const client = await ctx.existingClient();
      if (!client)
        throw new BangerError(ErrorCode.Unavailable, 'bangerd is not running', {
          hint: 'any banger command starts it, e.g. `banger daemon start`',
        });
      const s = await client.call(DaemonMethods.status, undefined);
      client.close();
      if (o.json) return out.json(s);
      out.line(`bangerd ${s.version} running, pid ${s.pid}, since ${s.startedAt}`);
      out.line(`state:  ${s.home}`);
      out.line(`socket: ${s.socket}`);
      out.line(`log:    ${s.logFile}`);
      out.line(`VMs:    ${s.vms.running} running of ${s.vms.total}`);
    });

  daemon
    .command('start')
    .description('start bangerd if it is not running')
    .action(async () => {
      const s = await ctx.call(DaemonMethods.status, undefined);
      out.info(`bangerd running, pid ${s.pid}`);
    });

  daemon
    .command('stop')
    .description('stop bangerd; running VMs keep running and are adopted by the next daemon')
    .addHelpText(
      'after',
      `
A daemon that does not answer within ${STOP_ANSWER_MS / 1000} s (hung) is ended with SIGTERM, then SIGKILL: nothing is lost, as
its VMs run on and the next banger command starts a daemon that adopts them.`,
    )
    .action(async () => {
      const client = await ctx.existingClient();
      if (!client) return out.info('bangerd is not running');
      // The daemon may close the connection before its answer is read: the socket check below decides.
      const asked = client.call(DaemonMethods.stop, undefined).then(
        () => true,
        (e: unknown) => {
          if (!(e instanceof BangerError && e.code === ErrorCode.Unavailable)) throw e;
          return true;
        },
      );
      // Unanswered, the request fails as the connection closes: that is not this command's error.
      void asked.catch(() => undefined);
      const answered = await Promise.race([asked, sleep(STOP_ANSWER_MS, false, { ref: false })]);
      client.close();
      if (!answered) {
        // A daemon that answers nothing removes nothing either: its pid file still names it.
        const pid = await daemonPid(ctx.paths);
        if (pid === undefined)
          throw new BangerError(ErrorCode.DeadlineExceeded, `bangerd did not answer within ${STOP_ANSWER_MS / 1000} s, and ${ctx.paths.daemonPidFile} names no process`, {
            hint: 'find it with `pgrep -f bangerd` and end it with `kill -9`; VMs keep running',
          });
        out.info(`bangerd (pid ${pid}) did not answer within ${STOP_ANSWER_MS / 1000} s: ending it (its VMs keep running)`);
        await endHungDaemon(pid);
        return out.info('bangerd stopped');
      }
      for (let i = 0; i < 100; i++) {
        try {
          await stat(ctx.paths.socket);
        } catch {
          return out.info('bangerd stopped');
        }
        await sleep(50);
      }
      throw new BangerError(ErrorCode.DeadlineExceeded, 'bangerd did not stop within 5 s', {
        hint: `see \`banger daemon logs\`; its pid is in ${ctx.paths.daemonPidFile}`,
      });
    });

  daemon
    .command('logs')
    .description("print the end of bangerd's log (JSON lines)")
    .option('-n, --lines <n>', 'how many lines', (v) => Number(v), 100)
    .action(async (o: { lines: number }) => {
      let text: string;
      try {
        text = await readFile(ctx.paths.daemonLog, 'utf8');
      } catch {
        throw new BangerError(ErrorCode.NotFound, `no daemon log at ${ctx.paths.daemonLog}`, {
          hint: 'bangerd has not run with this BANGER_HOME yet',
        });
      }
      let lines = text.trimEnd().split('\n').filter((l) => l !== '');
      // Just after a rotation the live log holds few lines: the rest are in its one rotated copy.
      if (lines.length < o.lines) {
        const older = await readFile(rotatedLog(ctx.paths.daemonLog), 'utf8').catch(() => '');
        lines = [...older.trimEnd().split('\n').filter((l) => l !== ''), ...lines];
      }
      out.line(lines.slice(-o.lines).join('\n'));
    });
}
