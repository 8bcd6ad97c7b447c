import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { VmMethods, type VmSshTarget } from '../../../protocol/vm.js';
import type { CliContext } from '../../context.js';
import { runInGuest } from '../../guest-exec.js';
import { out } from '../../output.js';
import { prepareWorkspace } from '../../workspace.js';
import { runCommand } from '../../../shared/command.js';
import { headCommitOf } from '../../../shared/workspace-files.js';

/**
 * OpenSSH arguments for a VM: banger's key, the VM's pinned host key, strict checking, and no agent or
 * X11 forwarding: the guest is untrusted, and `-o` wins over anything in the user's ~/.ssh/config.
 */
export function opensshArgs(t: VmSshTarget, extra: string[] = []): string[] {
  return [
    '-i', t.identityFile,
    '-o', 'IdentitiesOnly=yes',
    '-o', `UserKnownHostsFile=${t.knownHostsFile}`,
    '-o', 'StrictHostKeyChecking=yes',
    '-o', `HostKeyAlias=${t.hostKeyAlias}`,
    '-o', 'ForwardAgent=no',
    '-o', 'ForwardX11=no',
    '-o', 'LogLevel=ERROR',
    '-p', String(t.port),
    ...extra,
    `${t.user}@${t.host}`,
  ];
}

/**
 * Warns when the host checkout a VM's workspace came from has moved to another HEAD since the import;
 * with autoPrepare, imports it again instead (same guest path and untracked choice).
 */
async function checkWorkspaceFresh(ctx: CliContext, name: string, autoPrepare: boolean): Promise<void> {
  const vm = await ctx.call(VmMethods.show, { name });
  const ws = vm.workspace;
  if (!ws || !existsSync(ws.sourcePath)) return;
  const head = await headCommitOf(ws.sourcePath, runCommand, ctx.signal);
  if (head === ws.headCommit) return;
  const short = (c: string | null) => (c ? c.slice(0, 12) : '(no commit)');
  if (autoPrepare) {
    out.info(`host repo ${ws.sourcePath} moved from ${short(ws.headCommit)} to ${short(head)}: updating the workspace (only what changed is sent)`);
    await prepareWorkspace(ctx, { vm: name, repo: ws.sourcePath, guestPath: ws.guestPath, includeUntracked: ws.includeUntracked });
    return;
  }
  out.warn(
    `the workspace in ${name} was imported at ${short(ws.headCommit)}, but ${ws.sourcePath} is now at ${short(head)}: ` +
      `pass --auto-prepare, or run \`banger vm workspace prepare ${name} ${ws.sourcePath}\` (it sends only what changed)`,
  );
}

export function register(vm: Command, ctx: CliContext): void {
  vm.command('exec')
    .description("run a command in a running VM; exits with the command's exit code")
    .argument('<vm>', 'VM name')
    .argument('<command...>', 'the command and its arguments (put them after --)')
    .option('-t, --tty', 'allocate a terminal (for interactive programs)')
    .option('-w, --workdir <dir>', "directory in the guest to run in (default: the VM's workspace, else /root; a relative one is taken from there)")
    .option('--auto-prepare', "re-import the VM's workspace first when the host repo's HEAD moved since the import")
    .addHelpText(
      'after',
      `
In a VM with a workspace the command runs in the workspace directory, under \`mise exec\` when a
mise config (mise.toml, .tool-versions...) is there, in a directory above it or in the guest's home
(starting mise takes a moment). When the host repo's HEAD differs from the imported commit, a
warning says so.`,
    )
    .action(async (name: string, command: string[], o: { tty?: boolean; workdir?: string; autoPrepare?: boolean }) => {
      await checkWorkspaceFresh(ctx, name, !!o.autoPrepare);
      ctx.exitCode = await runInGuest(ctx, { vm: name, argv: command, cwd: o.workdir, tty: !!o.tty });
    });

  vm.command('ssh')
    .description('open an interactive shell in a VM with the system OpenSSH client')
    .argument('<vm>', 'VM name')
    .argument('[command...]', 'run this instead of a shell')
    .action(async (name: string, command: string[]) => {
      const t = await ctx.call(VmMethods.sshTarget, { name });
      ctx.exitCode = await new Promise<number>((resolve, reject) => {
        const child = spawn('ssh', [...opensshArgs(t, command.length === 0 ? ['-t'] : []), ...command], { stdio: 'inherit' });
        child.once('error', (e) =>
          reject(new BangerError(ErrorCode.FailedPrecondition, `could not run ssh: ${e.message}`, { hint: 'apt-get install openssh-client' })),
        );
        child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 + 2 : 255)));
      });
    });
}
