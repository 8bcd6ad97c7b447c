import { Command } from 'commander';
import { VERSION } from '../../shared/version.js';
import type { CliContext } from '../context.js';

export type CommandModule = { register(program: Command, ctx: CliContext): void };

/**
 * Each top-level command's module, imported only when the command line names it (all of them for help or
 * an unknown command), so a command pays start-up time only for what it uses. Order = order in --help.
 */
export const COMMANDS: readonly [names: string[], load: () => Promise<CommandModule>][] = [
  [['vm', 'ps'], () => import('./vm/index.js')],
  [['image'], () => import('./image/index.js')],
  [['daemon'], () => import('./daemon/index.js')],
  [['doctor'], () => import('./doctor.js')],
  [['dns'], () => import('./dns.js')],
  [['snapshot'], () => import('./snapshot.js')],
  [['pool'], () => import('./pool.js')],
  [['network'], () => import('./network.js')],
  [['ssh-config'], () => import('./ssh-config.js')],
  [['completion'], () => import('./completion.js')],
];

/** The `banger` program before any command is registered: name, description, --version. */
export function rootCommand(): Command {
  return new Command('banger').description('local microVM sandboxes for developers and coding agents').version(VERSION);
}
