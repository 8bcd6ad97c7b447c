import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { Methods, type VmSshTarget } from '../../../protocol/methods.js';
import type { CliContext } from '../../context.js';
import { runInGuest } from '../../guest-exec.js';

/** OpenSSH arguments for a VM: banger's key, the VM's pinned host key, strict checking. */
export function opensshArgs(t: VmSshTarget, extra: string[] = []): string[] {
  return [
    '-i', t.identityFile,
    '-o', 'IdentitiesOnly=yes',
    '-o', `UserKnownHostsFile=${t.knownHostsFile}`,
    '-o', 'StrictHostKeyChecking=yes',
    '-o', `HostKeyAlias=${t.hostKeyAlias}`,
    '-o', 'LogLevel=ERROR',
    '-p', String(t.port),
    ...extra,
    `${t.user}@${t.host}`,
  ];
}

export function register(vm: Command, ctx: CliContext): void {
  vm.command('exec')
    .description("run a command in a running VM; exits with the command's exit code")
    .argument('<name>')
    .argument('<command...>', 'the command and its arguments (put them after --)')
    .option('-t, --tty', 'allocate a terminal (for interactive programs)')
    .option('-w, --workdir <dir>', 'directory in the guest to run in')
    .action(async (name: string, command: string[], o: { tty?: boolean; workdir?: string }) => {
      ctx.exitCode = await runInGuest(ctx, { vm: name, argv: command, cwd: o.workdir, tty: !!o.tty });
    });

  vm.command('ssh')
    .description('open an interactive shell in a VM with the system OpenSSH client')
    .argument('<name>')
    .argument('[command...]', 'run this instead of a shell')
    .action(async (name: string, command: string[]) => {
      const t = await ctx.call(Methods.vmSshTarget, { name });
      ctx.exitCode = await new Promise<number>((resolve, reject) => {
        const child = spawn('ssh', [...opensshArgs(t, command.length === 0 ? ['-t'] : []), ...command], { stdio: 'inherit' });
        child.once('error', (e) =>
          reject(new BangerError(ErrorCode.FailedPrecondition, `could not run ssh: ${e.message}`, { hint: 'apt-get install openssh-client' })),
        );
        child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 + 2 : 255)));
      });
    });
}
