import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import type { BangerClient } from '../../../client/client.js';
import { isBangerError } from '../../../errors/index.js';
import type { VmStats } from '../../../protocol/session.js';
import type { CliContext } from '../../context.js';
import { out } from '../../output.js';
import { statsFailureLines, statsTable, type StatsFailure } from './session-format.js';

/** Time between samples of --watch. */
const WATCH_INTERVAL_MS = 2000;

/** One sample: the named VM's stats, or every running VM's (a VM whose agent fails gets a failure row). */
async function sample(client: BangerClient, name: string | undefined, signal: AbortSignal): Promise<(VmStats | StatsFailure)[]> {
  // Imported here: parsing other vm commands never loads these schemas.
  const [{ StatsMethods }, { VmMethods }] = await Promise.all([import('../../../protocol/session.js'), import('../../../protocol/vm.js')]);
  if (name !== undefined) return [await client.call(StatsMethods.vm, { name }, { signal })];
  const running = (await client.call(VmMethods.list, undefined, { signal })).filter((v) => v.state === 'running');
  return Promise.all(
    running.map((v) =>
      client.call(StatsMethods.vm, { name: v.name }, { signal }).catch((e: unknown): StatsFailure => {
        if (isBangerError(e) && e.code === 'Cancelled') throw e;
        return { name: v.name, error: e instanceof Error ? e.message : String(e) };
      }),
    ),
  );
}

function render(rows: (VmStats | StatsFailure)[], json: boolean, single: boolean, watch: boolean): void {
  if (json) {
    const v = single ? rows[0] : rows;
    return watch ? out.line(JSON.stringify(v)) : out.json(v);
  }
  if (watch && process.stdout.isTTY) out.raw('\x1b[H\x1b[2J');
  if (rows.length === 0) out.info('no running VMs');
  else out.line(statsTable(rows));
  for (const l of statsFailureLines(rows)) out.warn(l);
}

export function register(vm: Command, ctx: CliContext): void {
  vm.command('stats')
    .description('CPU, memory, load, disks, network, uptime and sessions of a running VM, or of every running VM')
    .argument('[vm]', 'VM name (default: one line per running VM)')
    .option('--json', 'print the stats as JSON (with --watch: one JSON line per sample)')
    .option('-w, --watch', `sample again every ${WATCH_INTERVAL_MS / 1000} s until Ctrl-C`)
    .addHelpText(
      'after',
      `
Memory is used / available, disks used / free (root is /, work is /root), network received / sent since boot.

Examples:
  banger vm stats
  banger vm stats dev --watch`,
    )
    .action(async (name: string | undefined, o: { json?: boolean; watch?: boolean }) => {
      const client = await ctx.client();
      for (;;) {
        let rows: (VmStats | StatsFailure)[];
        try {
          rows = await sample(client, name, ctx.signal);
        } catch (e) {
          // Ctrl-C is how --watch ends.
          if (o.watch && ctx.signal.aborted && isBangerError(e) && e.code === 'Cancelled') return;
          throw e;
        }
        render(rows, !!o.json, name !== undefined, !!o.watch);
        if (!o.watch) return;
        const stopped = await sleep(WATCH_INTERVAL_MS, false, { signal: ctx.signal }).catch(() => true);
        if (stopped) return;
      }
    });
}
