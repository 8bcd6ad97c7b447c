import type { Command } from 'commander';
import { VmMethods } from '../../../protocol/vm.js';
import type { CliContext } from '../../context.js';
import { runInGuest } from '../../guest-exec.js';
import { out } from '../../output.js';
import { BangerError, ErrorCode, isBangerError } from '../../../errors/index.js';
import { dryRunImport, looksLikeRepo, prepareWorkspace } from '../../workspace.js';
import { addMachineFlags, machineParams, type MachineFlags } from './create.js';

type RunFlags = MachineFlags & { rm?: boolean; tty?: boolean; guestPath?: string; includeUntracked?: boolean; dryRun?: boolean };

/**
 * Splits `vm run` operands into the repo and the command: the first operand is the repo when it
 * comes before `--` and looks like a directory (./x, ../x, /x, or an existing directory).
 */
export function splitRepo(operands: string[], rawArgv: readonly string[]): { repo?: string; command: string[] } {
  const dd = rawArgv.indexOf('--');
  const afterDashes = dd === -1 ? 0 : rawArgv.length - dd - 1;
  const beforeDashes = operands.length - afterDashes;
  const first = operands[0];
  if (beforeDashes >= 1 && first !== undefined && looksLikeRepo(first)) return { repo: first, command: operands.slice(1) };
  return { command: operands };
}

/** Deletes a `--rm` VM; one the daemon has deleted already (its own --rm cleanup) counts as done. */
async function deleteIfPresent(ctx: CliContext, name: string): Promise<void> {
  try {
    await ctx.call(VmMethods.delete, { name, force: true });
  } catch (e) {
    if (!(isBangerError(e) && e.code === ErrorCode.NotFound)) throw e;
  }
}

export function register(vm: Command, ctx: CliContext): void {
  addMachineFlags(
    vm
      .command('run')
      .description(
        "create and boot a VM, then run a command in it (or open a shell); exits with the command's exit code",
      )
      .argument(
        '[command...]',
        'optional host repo (./dir, /abs/dir or an existing directory) to import first, then the command to run after --; without one: an interactive shell',
      ),
  )
    .option('--rm', 'delete the VM when the command ends')
    .option('-t, --tty', 'allocate a terminal for the command')
    .option('--guest-path <path>', 'with a repo: directory in the guest (default /root/<repo name>)')
    .option('--include-untracked', 'with a repo: import untracked files too (ignored files are never imported)')
    .option('--dry-run', 'with a repo: list what would be imported and exit; creates no VM')
    .addHelpText(
      'after',
      `
Examples:
  banger vm run -- uname -a                 boot a VM from the default image and run uname
  banger vm run --name dev --cpus 2         boot 'dev' and open a shell in it
  banger vm run --rm -- make test           run, then delete the VM
  banger vm run ./myproject -- make test    import ./myproject into /root/myproject and run make there
  banger vm run --from warm -- make test    resume snapshot 'warm' (banger vm snapshot) in a new VM, run there`,
    )
    .action(async (operands: string[], o: RunFlags) => {
      const { repo, command } = splitRepo(operands, process.argv);
      if (o.dryRun) {
        if (repo === undefined)
          throw new BangerError(ErrorCode.InvalidArgument, '--dry-run needs a repo to list', {
            hint: 'banger vm run ./myproject --dry-run',
          });
        await dryRunImport(ctx, { repo, guestPath: o.guestPath, includeUntracked: o.includeUntracked });
        return;
      }
      // With --rm the daemon owns the cleanup too: it deletes the VM when this client's connection closes
      // (killed, terminal gone), so the delete below is the common path, not the only one.
      const v = await ctx.call(VmMethods.create, { ...machineParams(o), start: true, rm: !!o.rm }, { progress: true });
      out.info(`${v.name} is running (${v.vmm}/${v.accel ?? '?'}); ssh: banger vm ssh ${v.name}`);
      try {
        if (repo !== undefined)
          await prepareWorkspace(ctx, { vm: v.name, repo, guestPath: o.guestPath, includeUntracked: o.includeUntracked });
        const interactive = command.length === 0;
        ctx.exitCode = await runInGuest(ctx, { vm: v.name, argv: command, tty: interactive ? !!process.stdin.isTTY : !!o.tty });
      } finally {
        if (o.rm) {
          await deleteIfPresent(ctx, v.name);
          out.info(`deleted ${v.name}`);
        }
      }
    });
}
