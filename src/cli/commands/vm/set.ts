import type { Command } from 'commander';
import { VmMethods } from '../../../protocol/vm.js';
import { parseIntFlag, parseMib, type CliContext } from '../../context.js';
import { out } from '../../output.js';

export function register(vm: Command, ctx: CliContext): void {
  vm.command('set')
    .description("change a VM's CPUs, memory or work disk size")
    .argument('<name>')
    .option('--cpus <n>', 'virtual CPUs (applies at the next start; recorded even while the VM runs)', (v) => parseIntFlag('--cpus', v))
    .option('--memory <size>', 'memory, e.g. 2G (applies at the next start; recorded even while the VM runs)', (v) => parseMib('--memory', v))
    .option(
      '--disk-size <size>',
      'grow the work disk mounted at /root, e.g. 16G: only grows, only while the VM is stopped (the guest sees it at the next start)',
      (v) => parseMib('--disk-size', v),
    )
    .option('--json', 'print the VM as JSON')
    .addHelpText(
      'after',
      [
        '',
        'A disk never shrinks (exit 64), and grows only while the VM is stopped (exit 67 otherwise: `banger vm stop` it',
        'first); the guest filesystem grows with it at the next start. `banger vm show` prints each disk\'s size and',
        'what it really takes on the host.',
        '',
        'Examples:',
        '  banger vm set dev --cpus 4 --memory 4G && banger vm restart dev',
        '  banger vm stop dev && banger vm set dev --disk-size 64G && banger vm start dev',
      ].join('\n'),
    )
    .action(async (name: string, o: { cpus?: number; memory?: number; diskSize?: number; json?: boolean }) => {
      const v = await ctx.call(VmMethods.set, { name, cpus: o.cpus, memoryMib: o.memory, diskSizeMib: o.diskSize });
      if (o.json) return out.json(v);
      out.info(`${v.name}: ${v.vcpus} CPUs, ${v.memoryMib} MiB memory, ${v.diskSizeMib} MiB work disk`);
      if (v.state === 'running' && (o.cpus !== undefined || o.memory !== undefined))
        out.info(`CPUs and memory apply at the next start: \`banger vm restart ${v.name}\``);
    });
}
