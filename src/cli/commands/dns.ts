import type { Command } from 'commander';
import { DnsMethods, type DnsStatus } from '../../protocol/dns.js';
import type { CliContext } from '../context.js';
import { out, table } from '../output.js';

/** `banger dns install | uninstall | status`: make `<name>.vm` resolve for every program on the host. */
export function register(program: Command, ctx: CliContext): void {
  const dns = program
    .command('dns')
    .description('resolve <name>.vm on this host (systemd-resolved routing domain, or a block in /etc/hosts)');

  dns
    .command('install')
    .description('make <name>.vm resolve for every program on this host (idempotent); edits system files, so a normal user\'s daemon changes nothing and prints the root command instead')
    .option('--json', 'print the resulting status as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await ctx.call(DnsMethods.install, undefined);
      if (o.json) out.json(s);
      else {
        out.info(`installed: ${s.detail}`);
        const first = s.names[0];
        if (first) out.info(`try: getent hosts ${first.name}`);
      }
    });

  dns
    .command('uninstall')
    .description('undo `banger dns install` exactly')
    .option('--json', 'print the resulting status as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await ctx.call(DnsMethods.uninstall, undefined);
      if (o.json) out.json(s);
      else out.info('uninstalled: .vm names no longer resolve on this host');
    });

  dns
    .command('status')
    .description('show how .vm names resolve on this host, and which names exist')
    .option('--json', 'print the status as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await ctx.call(DnsMethods.status, undefined);
      if (o.json) out.json(s);
      else printStatus(s);
    });
}

function printStatus(s: DnsStatus): void {
  out.line(`installed:        ${s.installed ? `yes (${s.mechanism})` : 'no'}`);
  out.line(`systemd-resolved: ${s.resolvedActive ? 'running' : 'not running'}`);
  out.line(`dns server:       ${s.dnsAddress}`);
  out.line(`detail:           ${s.detail}`);
  if (s.names.length > 0) {
    out.line('');
    out.line(
      table(
        ['NAME', 'ADDRESS'],
        s.names.map((n) => [n.name, n.address]),
      ),
    );
  }
}
