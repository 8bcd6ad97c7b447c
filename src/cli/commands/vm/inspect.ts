import type { Command } from 'commander';
import { VmMethods } from '../../../protocol/vm.js';
import type { CliContext } from '../../context.js';
import { out } from '../../output.js';
import { portsTable, vmDetails, vmTable } from './format.js';

export function registerList(cmd: Command, ctx: CliContext): Command {
  return cmd.option('--json', 'print the VMs as JSON').action(async (o: { json?: boolean }) => {
    const vms = await ctx.call(VmMethods.list, undefined);
    if (o.json) out.json(vms);
    else if (vms.length === 0) out.info('no VMs yet: create one with `banger vm run -- uname -a`');
    else out.line(vmTable(vms));
  });
}

export function register(vm: Command, ctx: CliContext): void {
  registerList(vm.command('list').alias('ls').description('list VMs'), ctx);

  vm.command('show')
    .description("show a VM's details")
    .argument('<vm>', 'VM name')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const v = await ctx.call(VmMethods.show, { name });
      if (o.json) out.json(v);
      else out.line(vmDetails(v));
    });

  vm.command('ports')
    .description("list the TCP ports a running VM listens on, and where the host reaches them")
    .argument('<vm>', 'VM name')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await ctx.call(VmMethods.ports, { name });
      if (o.json) return out.json(r);
      if (r.ports.length === 0) return out.info(`${name} listens on no TCP port`);
      out.line(portsTable(r));
    });

  vm.command('logs')
    .description("print the tail of a VM's serial console")
    .argument('<vm>', 'VM name')
    .option('--bytes <n>', 'how much of the end to print', (v) => Number(v), 65536)
    .action(async (name: string, o: { bytes: number }) => {
      const r = await ctx.call(VmMethods.logs, { name, tailBytes: o.bytes });
      out.raw(r.console);
    });
}
