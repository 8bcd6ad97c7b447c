import type { Command } from 'commander';
import { ErrorCode, isBangerError } from '../../../errors/index.js';
import { VmMethods } from '../../../protocol/vm.js';
import { parseIntFlag, type CliContext } from '../../context.js';
import { out, printBangerError } from '../../output.js';
import { NO_SYNC_HELP, syncParams } from './create.js';

export function register(vm: Command, ctx: CliContext): void {
  vm.command('start')
    .description('boot a stopped VM and wait until SSH answers')
    .argument('<vm>', 'VM name')
    .option('--no-sync', NO_SYNC_HELP)
    .option('--json', 'print the VM as JSON')
    .action(async (name: string, o: { json?: boolean; sync?: boolean }) => {
      const v = await ctx.call(VmMethods.start, { name, ...syncParams(o) }, { json: o.json, progress: true });
      if (o.json) out.json(v);
      else out.info(`${v.name} is running (ssh: banger vm ssh ${v.name})`);
    });

  vm.command('stop')
    .description('shut a VM down: guest poweroff first, forced after --timeout')
    .argument('<vm...>', 'VM names')
    .option('-f, --force', 'kill the VMM without asking the guest')
    .option('--timeout <seconds>', 'wait this long for a graceful shutdown (default 20)', (v) => parseIntFlag('--timeout', v))
    .option('--json', 'print the VMs as JSON')
    .action(async (names: string[], o: { force?: boolean; timeout?: number; json?: boolean }) => {
      const res = [];
      for (const name of names) {
        const v = await ctx.call(VmMethods.stop, { name, force: o.force, timeoutSeconds: o.timeout });
        res.push(v);
        if (!o.json) out.info(`${v.name} is ${v.state}`);
      }
      if (o.json) out.json(res);
    });

  vm.command('restart')
    .description('stop and start a VM')
    .argument('<vm>', 'VM name')
    .option('--no-sync', NO_SYNC_HELP)
    .option('--json', 'print the VM as JSON')
    .action(async (name: string, o: { json?: boolean; sync?: boolean }) => {
      const v = await ctx.call(VmMethods.restart, { name, ...syncParams(o) }, { json: o.json, progress: true });
      if (o.json) out.json(v);
      else out.info(`${v.name} is running`);
    });

  vm.command('delete')
    .alias('rm')
    .description('delete VMs: their processes, disks and keys')
    .argument('<vm...>', 'VM names')
    .option('-f, --force', 'stop running VMs first')
    .addHelpText('after', '\nEach VM named is tried in turn: one that is missing or refused is reported and the rest are still deleted;\nthe exit code is the first failure\'s.')
    .action(async (names: string[], o: { force?: boolean }) => {
      for (const name of names) {
        try {
          await ctx.call(VmMethods.delete, { name, force: o.force });
          out.info(`deleted ${name}`);
        } catch (e) {
          // Cancelled, or not a banger error (a bug): stop here, as for any command.
          if (!isBangerError(e) || e.code === ErrorCode.Cancelled || names.length === 1) throw e;
          const code = printBangerError(e);
          if (ctx.exitCode === 0) ctx.exitCode = code;
        }
      }
    });
}
