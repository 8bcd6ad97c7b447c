import { homedir } from 'node:os';
import type { Command } from 'commander';
import { VmMethods } from '../../../protocol/vm.js';
import type { CliContext } from '../../context.js';
import { out } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';
import { syncSummary } from './format.js';

export function register(vm: Command, ctx: CliContext): void {
  vm.command('sync')
    .description('copy your git identity, SSH public keys and configured files into a running VM again')
    .argument('<vm>', 'VM name')
    .option('--json', 'print what was synced as JSON')
    .addHelpText(
      'after',
      `
Every start does this too (unless --no-sync). What is copied:
  git identity   your user.name and user.email, into the guest's global git config
  SSH keys       ~/.ssh/id_*.pub, appended to the guest's /root/.ssh/authorized_keys (existing lines kept)
  files          the "sync" entries of $BANGER_HOME/config.json, root-owned with their mode, e.g.
                   "sync": [{ "host": "~/.config/gh/hosts.yml", "guest": "/root/.config/gh/hosts.yml", "mode": "0600" }]
                 a missing host file is a warning; a link out of your home is refused unless the entry
                 sets "followLinks": true. Files are capped at 1 MiB. Contents are never logged.`,
    )
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await ctx.call(VmMethods.sync, { name, home: homedir() });
      if (o.json) return out.json(r);
      for (const w of r.warnings) out.warn(escapeForTerminal(w));
      out.info(`synced into ${name}: ${syncSummary(r)}`);
    });
}
