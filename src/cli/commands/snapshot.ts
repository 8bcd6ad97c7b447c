import type { Command } from 'commander';
import { SnapshotMethods, type SnapshotInfo } from '../../protocol/snapshot.js';
import { parseIntFlag, type CliContext } from '../context.js';
import { out, table } from '../output.js';

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

export function snapshotDetails(s: SnapshotInfo): string {
  return [
    `Name:       ${s.name}`,
    `ID:         ${s.id}`,
    `Source VM:  ${s.sourceVm}`,
    `Image:      ${s.image} (${s.vmm})`,
    `Machine:    ${s.vcpus} vCPU, ${s.memoryMib} MiB memory, ${s.diskSizeMib} MiB work disk`,
    `Network:    ${s.network} (VMs made from it get the same, each its own address)`,
    `Created:    ${s.createdAt} (the VM was paused ${s.pausedMs} ms)`,
    `Host disk:  ${mib(s.hostBytes)} (device state, memory, frozen disk layers)`,
    `Used by:    ${s.dependents.length > 0 ? s.dependents.join(', ') : '-'}`,
    ...(s.madeByFork ? ['Made by:    vm fork (deleted with the last VM that uses it)'] : []),
    ...(s.restorable
      ? []
      : [`Restorable: no (${s.madeByFork ? 'vm fork let its memory go once its copies ran' : 'the daemon stopped while taking it'}: it holds disks only)`]),
    `Directory:  ${s.dir}`,
  ].join('\n');
}

/** `banger vm snapshot VM`: registered under `vm`. */
export function registerVmSnapshot(vm: Command, ctx: CliContext): void {
  vm.command('snapshot')
    .description('save a running VM (memory, processes, disks) as a snapshot; the VM keeps running')
    .argument('<vm>', 'the running VM')
    .option('--name <name>', 'snapshot name (default: VM-N)')
    .option('--json', 'print the snapshot as JSON')
    .addHelpText(
      'after',
      '\nThe VM is paused while its memory is written (about a second per few hundred MiB in use), then resumes.\n' +
        'Its disks are not copied: their current files are frozen and the VM continues on copy-on-write layers.\n' +
        'Start copies with `banger vm run --from SNAP` or `banger vm create --from SNAP`.',
    )
    .action(async (name: string, o: { name?: string; json?: boolean }) => {
      const s = await ctx.call(SnapshotMethods.create, { vm: name, ...(o.name ? { name: o.name } : {}) });
      if (o.json) out.json(s);
      else out.line(snapshotDetails(s));
    });
}

/** `banger vm fork VM --count N`: registered under `vm`. */
export function registerVmFork(vm: Command, ctx: CliContext): void {
  vm.command('fork')
    .description('start N running copies of a running VM now (a snapshot, then N VMs restored from it)')
    .argument('<vm>', 'the running VM')
    .requiredOption('--count <n>', 'how many copies (1-16)', (v) => parseIntFlag('--count', v, 1, 16))
    .option('--name <prefix>', 'copies are named PREFIX-1..N (default: VM-fork)')
    .option('--json', 'print the snapshot and the VMs as JSON')
    .addHelpText(
      'after',
      `
Each copy resumes where the VM is now: its processes and sessions still running, its workspace with the
guest's uncommitted edits, under its own name, hostname, address, SSH host key, machine-id and RNG. The VM is
paused only while its memory is saved. All or nothing: a copy that fails takes the others with it. The snapshot
the copies start from is listed in \`banger snapshot list\` (disks only) and goes with the last VM on it.

Examples:
  banger vm fork dev --count 3 --name try                        try-1, try-2, try-3
  banger vm session send try-2 agent '{"type":"prompt","message":"try another way"}'
  banger vm workspace compare try-1 try-2 try-3 --check 'npm test'
  banger vm workspace export try-2 | git -C ~/src/app apply      take the attempt you pick
  banger vm delete --force try-1 try-2 try-3`,
    )
    .action(async (name: string, o: { count: number; name?: string; json?: boolean }) => {
      const r = await ctx.call(
        SnapshotMethods.fork,
        { vm: name, count: o.count, ...(o.name ? { name: o.name } : {}) },
        { json: o.json, progress: true },
      );
      if (o.json) return out.json(r);
      out.line(`snapshot ${r.snapshot.name} (the VM was paused ${r.snapshot.pausedMs} ms)`);
      for (const v of r.vms) out.line(`${v.name}  ${v.state}  ${v.network.hostAddress}:${v.network.sshPort}`);
    });
}

export function register(program: Command, ctx: CliContext): void {
  const snap = program.command('snapshot').description('saved running VMs (`banger vm snapshot`): list, show, delete');
  snap
    .command('list')
    .description('list snapshots')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const all = await ctx.call(SnapshotMethods.list, undefined);
      if (o.json) return out.json(all);
      if (all.length === 0) return out.info('no snapshots (take one with `banger vm snapshot VM`)');
      out.line(
        table(
          ['NAME', 'SOURCE VM', 'MEMORY', 'HOST DISK', 'USED BY', 'CREATED'],
          all.map((s) => [s.restorable ? s.name : `${s.name} (disks only)`, s.sourceVm, `${s.memoryMib}M`, mib(s.hostBytes), s.dependents.join(',') || '-', s.createdAt]),
        ),
      );
    });
  snap
    .command('show')
    .description('show one snapshot')
    .argument('<snapshot>', 'name or id')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const s = await ctx.call(SnapshotMethods.show, { name });
      if (o.json) out.json(s);
      else out.line(snapshotDetails(s));
    });
  snap
    .command('delete')
    .alias('rm')
    .description('delete a snapshot (refused while a VM\'s disks are layered on it: its source VM, VMs made from it)')
    .argument('<snapshot>', 'name or id')
    .action(async (name: string) => {
      const r = await ctx.call(SnapshotMethods.delete, { name });
      out.info(`deleted snapshot '${r.deleted}'`);
    });
}
