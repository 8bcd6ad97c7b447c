import type { Command } from 'commander';
import { Methods } from '../../../protocol/methods.js';
import type { CliContext } from '../../context.js';
import { runInGuest } from '../../guest-exec.js';
import { out } from '../../output.js';
import { addMachineFlags, machineParams, type MachineFlags } from './create.js';

export function register(vm: Command, ctx: CliContext): void {
  addMachineFlags(
    vm
      .command('run')
      .description(
        "create and boot a VM, then run a command in it (or open a shell); exits with the command's exit code",
      )
      .argument('[command...]', 'command to run in the guest, after --; without one: an interactive shell'),
  )
    .option('--rm', 'delete the VM when the command ends')
    .option('-t, --tty', 'allocate a terminal for the command')
    .addHelpText(
      'after',
      `
Examples:
  banger vm run -- uname -a                 boot a VM from the default image and run uname
  banger vm run --name dev --cpus 2         boot 'dev' and open a shell in it
  banger vm run --rm -- make test           run, then delete the VM`,
    )
    .action(async (command: string[], o: MachineFlags & { rm?: boolean; tty?: boolean }) => {
      const v = await ctx.call(Methods.vmCreate, { ...machineParams(o), start: true }, { progress: true });
      out.info(`${v.name} is running (${v.vmm}/${v.accel ?? '?'}); ssh: banger vm ssh ${v.name}`);
      try {
        const interactive = command.length === 0;
        ctx.exitCode = await runInGuest(ctx, { vm: v.name, argv: command, tty: interactive ? !!process.stdin.isTTY : !!o.tty });
      } finally {
        if (o.rm) {
          await ctx.call(Methods.vmDelete, { name: v.name, force: true });
          out.info(`deleted ${v.name}`);
        }
      }
    });
}
