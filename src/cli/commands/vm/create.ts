import { homedir } from 'node:os';
import { Option, type Command } from 'commander';
import {
  ACCEL_CHOICES,
  NETWORK_MODES,
  VMM_CHOICES,
  type AccelChoice,
  type NetworkMode,
  type VmmChoice,
} from '../../../protocol/common.js';
import { VmMethods, type VmCreateParams } from '../../../protocol/vm.js';
import { parseIntFlag, parseMib, type CliContext } from '../../context.js';
import { out } from '../../output.js';
import { vmDetails } from './format.js';

export interface MachineFlags {
  name?: string;
  image?: string;
  cpus?: number;
  memory?: number;
  diskSize?: number;
  vmm?: VmmChoice;
  accel?: AccelChoice;
  egress?: boolean;
  network?: NetworkMode;
  /** commander's negation of --no-agent: false when given. */
  agent?: boolean;
  /** commander's negation of --no-sync: false when given. */
  sync?: boolean;
  from?: string;
  /** commander's negation of --no-pool: false when given. */
  pool?: boolean;
}

/** What a start syncs: the invoking user's identity from their home directory, unless --no-sync. */
export function syncParams(o: { sync?: boolean }): { sync: false } | { home: string } {
  return o.sync === false ? { sync: false } : { home: homedir() };
}

export const NO_SYNC_HELP = 'do not copy your git identity, SSH public keys and config.json "sync" files into the guest at start';

/** The flags vm create and vm run share. */
export function addMachineFlags(cmd: Command): Command {
  return cmd
    .option('--name <name>', 'VM name: lowercase letters, digits, hyphens (default: generated)')
    .option('--image <image>', "image to boot (default: 'default', built on first use)")
    .option('--cpus <n>', 'virtual CPUs (default 2)', (v) => parseIntFlag('--cpus', v))
    .option('--memory <size>', 'memory, e.g. 1024M or 2G (default 1G)', (v) => parseMib('--memory', v))
    .option('--disk-size <size>', 'size of the work disk mounted at /root, e.g. 4G (default 4G)', (v) => parseMib('--disk-size', v))
    .addOption(new Option('--vmm <vmm>', 'virtual machine monitor: firecracker needs KVM and --network tap; auto picks it only then, else qemu').choices([...VMM_CHOICES]).default('auto'))
    .addOption(
      new Option('--network <mode>', 'loopback: a 127.x.y.z address per VM, per-user ranges (default); tap: an address on banger\'s bridge (root)').choices([...NETWORK_MODES]),
    )
    .option('--egress', 'let the guest reach the network outside the VM (off by default: it reaches nothing)')
    .option('--no-agent', 'do not start the guest agent: commands go over SSH; no sessions or stats')
    .option('--no-sync', NO_SYNC_HELP)
    .option('--no-pool', 'with a start: boot a new VM even when a warm pool (`banger pool set`) has one parked')
    .option('--from <snapshot>', "resume a snapshot (`banger vm snapshot`): its memory, processes and files, with this VM's own name, address, SSH host key, machine-id and RNG; image, CPUs, memory and disk size are the snapshot's")
    .addOption(
      new Option('--accel <accel>', 'acceleration: auto probes KVM and falls back to TCG').choices([...ACCEL_CHOICES]).default('auto'),
    );
}

export function machineParams(o: MachineFlags): VmCreateParams {
  return {
    name: o.name,
    image: o.image,
    cpus: o.cpus,
    memoryMib: o.memory,
    diskSizeMib: o.diskSize,
    vmm: o.vmm,
    accel: o.accel,
    egress: o.egress,
    network: o.network,
    ...(o.agent === false ? { agent: false } : {}),
    ...(o.from !== undefined ? { from: o.from } : {}),
    ...(o.pool === false ? { pool: false } : {}),
    ...syncParams(o),
  };
}

export function register(vm: Command, ctx: CliContext): void {
  addMachineFlags(vm.command('create').description('create a VM (disks, keys) without booting it'))
    .option('--start', 'boot it right away')
    .option('--json', 'print the VM as JSON')
    .action(async (o: MachineFlags & { start?: boolean; json?: boolean }) => {
      const v = await ctx.call(VmMethods.create, { ...machineParams(o), start: !!o.start }, { json: o.json, progress: true });
      if (o.json) out.json(v);
      else out.line(vmDetails(v));
    });
}
