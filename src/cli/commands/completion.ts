import { Argument, type Command } from 'commander';
import { bashScript, zshScript } from '../completion/bash.js';
import { fishScript } from '../completion/fish.js';
import { completionNodes } from '../completion/spec.js';
import type { CliContext } from '../context.js';
import { out } from '../output.js';
import { COMMANDS, rootCommand } from './table.js';

export const SHELLS = ['bash', 'zsh', 'fish'] as const;
export type Shell = (typeof SHELLS)[number];

/** The script for `shell`, from a program with every command registered. */
export function completionScript(program: Command, shell: Shell): string {
  const nodes = completionNodes(program);
  return shell === 'bash' ? bashScript(nodes) : shell === 'zsh' ? zshScript(nodes) : fishScript(nodes);
}

/** The whole program, every top-level command registered in --help order, for the script to cover. */
export async function fullProgram(ctx: CliContext): Promise<Command> {
  const program = rootCommand();
  for (const m of await Promise.all(COMMANDS.map(([, load]) => load()))) m.register(program, ctx);
  return program;
}

export function register(program: Command, ctx: CliContext): void {
  program
    .command('completion')
    .description('print a shell completion script (commands, flags, and VM, image and session names)')
    .addArgument(new Argument('<shell>', 'bash, zsh or fish').choices([...SHELLS]))
    .addHelpText(
      'after',
      `
Install:
  bash   banger completion bash > /etc/bash_completion.d/banger      (all users; needs bash-completion)
         or in ~/.bashrc: source <(banger completion bash)
  zsh    in ~/.zshrc, after compinit: source <(banger completion zsh)
  fish   banger completion fish > ~/.config/fish/completions/banger.fish

Commands and flags complete without running banger. VM, image and session names are asked of bangerd
at TAB time, only if it is already running (a TAB never starts it) and for at most 1 s. Which VMs are
offered depends on the command: exec, ssh, stop, stats, ports, session and workspace offer running VMs,
start offers the others, the rest offer all. Make the script again after upgrading banger.`,
    )
    .action(async (shell: Shell) => {
      out.raw(completionScript(await fullProgram(ctx), shell));
    });
}
