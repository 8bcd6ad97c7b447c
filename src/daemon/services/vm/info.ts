import type { VmInfo } from '../../../protocol/vm.js';
import { dnsName } from '../../../protocol/names.js';
import type { Paths, VmPaths } from '../../../shared/paths.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { LiveVm } from './live.js';
import { vmDisks } from './settings.js';

/**
 * What a client is shown of a VM: `vm show`/`vm list`'s VmInfo, built from its record and what the daemon
 * observes right now (a record and a reality that disagree are reported as the VM's problem, never
 * trusted), and the SSH target `vm ssh` connects to. Pure functions over what VmService looks up.
 */

/** What VmInfo is built from besides the record, looked up by VmService. */
export interface VmInfoSources {
  /** The VM's process as this daemon holds it, if it does. */
  live: LiveVm | undefined;
  /** The name of the VM's image; undefined when the image is gone (its id is shown then). */
  imageName: string | undefined;
  /** The channel `vm exec` uses (LiveVms.channel). */
  channel: VmInfo['channel'];
  vp: VmPaths;
  /** Whether the VM's driver keeps its disks as qcow2 (true when the driver is not loaded). */
  qcow2: boolean;
}

/** `vm show`'s view of a VM; `problem` says where its record and its process disagree. */
export function vmInfo(v: VmRecord, o: VmInfoSources): VmInfo {
  const live = o.live;
  let problem: string | null = null;
  if (v.state === 'running' && !live) problem = 'recorded as running but no VMM process is attached';
  if ((v.state === 'stopped' || v.state === 'created') && live) problem = 'recorded as stopped but its VMM process runs';
  return {
    id: v.id,
    name: v.name,
    image: o.imageName ?? v.imageId,
    state: v.state,
    vcpus: v.vcpus,
    memoryMib: v.memoryMib,
    diskSizeMib: v.diskSizeMib,
    vmm: v.vmm,
    accel: v.accel,
    network: {
      mode: v.networkMode,
      hostAddress: v.hostAddress,
      sshPort: v.sshPort,
      guestAddress: v.guestAddress,
      egress: v.egress,
      forwardedPorts: live ? [...live.forwards].sort((a, b) => a - b) : [],
      portWatch: live?.portWatch ?? null,
    },
    dnsName: dnsName(v.name),
    pid: live?.handle.pid ?? null,
    channel: o.channel,
    agent: v.agent,
    lastError: v.lastError,
    problem,
    createdAt: v.createdAt,
    startedAt: v.startedAt,
    dir: v.dir,
    disks: vmDisks(o.vp, o.qcow2),
    workspace: v.workspace,
    synced: v.synced,
  };
}

/** How a client reaches the guest's sshd: address, port, banger's key and the VM's pinned host key. */
export function sshTargetOf(vm: VmRecord, paths: Paths) {
  return {
    host: vm.hostAddress,
    port: vm.sshPort,
    user: 'root',
    identityFile: paths.sshPrivateKey,
    knownHostsFile: paths.vm(vm.id).knownHosts,
    hostKeyAlias: dnsName(vm.name),
  };
}
