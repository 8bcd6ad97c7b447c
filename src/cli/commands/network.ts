import type { Command } from 'commander';
import { NetworkMethods, type NetworkStatus } from '../../protocol/network.js';
import type { CliContext } from '../context.js';
import { out, table } from '../output.js';

function print(s: NetworkStatus): void {
  out.line(`default mode: ${s.defaultMode}`);
  out.line('loopback:     supported (a 127.x.y.z address per VM from this user\'s range, user networking)');
  if (!s.tap.supported) {
    out.line(`tap:          not available: ${s.tap.reason ?? 'unknown'}`);
    return;
  }
  const b = s.tap.bridge;
  out.line(
    `tap:          bridge ${b?.name} ${b?.subnet} (${b?.exists ? (b.up ? 'up' : 'down') : 'not created'}), isolation rules ${s.tap.rulesInstalled ? 'installed' : 'absent'}`,
  );
  if (s.tap.vms && s.tap.vms.length > 0)
    out.line(
      table(
        ['VM', 'TAP', 'ADDRESS', 'MAC', 'EGRESS'],
        s.tap.vms.map((v) => [v.name ?? `(deleted ${v.vmId})`, v.tap, v.address, v.mac, v.egress ? 'yes' : 'no']),
      ),
    );
}

export function register(program: Command, ctx: CliContext): void {
  const network = program.command('network').description("banger's host networking (the tap bridge, its taps and rules)");
  network
    .command('status')
    .description('which network modes work here, and what tap networking has put on the host')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await ctx.call(NetworkMethods.status, undefined);
      if (o.json) out.json(s);
      else print(s);
    });
  network
    .command('down')
    .description('remove the bridge, every tap and banger\'s nftables rules (refused while tap VMs run)')
    .option('--json', 'print the resulting status as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await ctx.call(NetworkMethods.down, undefined);
      if (o.json) out.json(s);
      else out.info('tap networking removed from the host');
    });
}
