import type { Command } from 'commander';
import { PoolMethods, type PoolInfo } from '../../protocol/pool.js';
import { parseIntFlag, type CliContext } from '../context.js';
import { out, table } from '../output.js';

const line = (p: PoolInfo) =>
  `pool ${p.image}: ${p.ready} of ${p.size} parked${p.filling > 0 ? `, ${p.filling} booting` : ''}, ${p.taken} taken${p.lastError ? `; last refill failed: ${p.lastError}` : ''}`;

export function register(program: Command, ctx: CliContext): void {
  const pool = program
    .command('pool')
    .description('warm pools: VMs booted ahead and parked, so `vm run` starts at once')
    .addHelpText(
      'after',
      `
A pool keeps K VMs of an image booted with the default CPUs, memory and disk, loopback networking and the
guest agent, then parked: their CPUs are stopped, so they cost memory but no CPU while they wait.
\`banger vm run\` (and \`vm create --start\`) with exactly those options takes a parked VM instead of booting
one: it gets your name, hostname and identity, its clock is set, and it is an ordinary VM from then on.
The pool refills in the background, one boot at a time. \`--no-pool\` on vm run / vm create boots a new VM.
Parked VMs are not listed by \`banger vm list\`; a daemon restart boots them again.

Examples:
  banger pool set default --size 2     keep two VMs of the default image parked
  banger vm run --rm -- make test      takes one (the pool refills)
  banger pool status                   parked, booting and taken counts
  banger pool set default --size 0     remove the pool and its VMs`,
    );
  pool
    .command('set')
    .description('keep SIZE VMs of IMAGE booted and parked (0 removes the pool)')
    .argument('<image>', 'image name')
    .requiredOption('--size <k>', 'how many VMs to keep parked (0-16)', (v) => parseIntFlag('--size', v, 0, 16))
    .option('--json', 'print the pool as JSON')
    .action(async (image: string, o: { size: number; json?: boolean }) => {
      const p = await ctx.call(PoolMethods.set, { image, size: o.size });
      if (o.json) return out.json(p);
      if (p.size === 0) return out.info(`pool ${image} removed`);
      out.info(`${line(p)} (it fills in the background: \`banger pool status\`)`);
    });
  pool
    .command('status')
    .description('each pool: its size, VMs parked and booting, VMs taken, the last refill error')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const all = await ctx.call(PoolMethods.status, undefined);
      if (o.json) return out.json(all);
      if (all.length === 0) return out.info('no pools (make one with `banger pool set IMAGE --size K`)');
      out.line(
        table(
          ['IMAGE', 'SIZE', 'PARKED', 'BOOTING', 'TAKEN', 'LAST ERROR'],
          all.map((p) => [p.image, String(p.size), String(p.ready), String(p.filling), String(p.taken), p.lastError ?? '-']),
        ),
      );
    });
}
