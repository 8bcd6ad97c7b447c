/**
 * Pure builders of Firecracker's argv and its pre-boot API requests from a LaunchSpec. Everything a
 * Firecracker VM is configured with passes through here, so unit tests pin it.
 */
import { basename, dirname } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { DiskSpec, LaunchSpec } from '../driver.js';
import type { FirecrackerRequest } from './api.js';
import { MAC_RE } from '../../../protocol/names.js';

/** The guest's vsock context id. 0-2 are reserved; each Firecracker VM has its own vsock device, so 3 always. */
export const FIRECRACKER_GUEST_CID = 3;

/** The id of the one network interface (the guest names it eth0 with net.ifnames=0). */
export const FIRECRACKER_IFACE_ID = 'eth0';

/** The request that boots the guest once every pre-boot request was accepted. */
export const INSTANCE_START: FirecrackerRequest = {
  method: 'PUT',
  path: '/actions',
  body: { action_type: 'InstanceStart' },
};

/**
 * Arguments Firecracker needs on the kernel command line that QEMU does not, added only when the command
 * line does not set them already:
 * - `console=ttyS0`: Firecracker's only console is the 8250 serial port at ttyS0.
 * - `reboot=k`: a guest reset through the i8042 keyboard controller is what makes the Firecracker process
 *   exit (a guest `poweroff` only halts the vCPUs). SendCtrlAltDel (requestShutdown) relies on this: the guest's init
 *   turns Ctrl-Alt-Del into a reboot, and the reboot ends the VMM.
 * - `panic=1`: a panicking guest reboots after 1 s, which ends the VMM, instead of hanging forever.
 *
 * Not `pci=off`: Firecracker adds it itself when it runs without a PCI bus (and must not get it with --enable-pci).
 */
export const FIRECRACKER_REQUIRED_BOOT_ARGS: readonly string[] = ['console=ttyS0', 'reboot=k', 'panic=1'];

/** Firecracker's `--id`: 1 to 64 characters, alphanumeric or '-'. */
const INSTANCE_ID = /^[A-Za-z0-9-]{1,64}$/;
/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1). */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const DISK_ORDER: readonly DiskSpec['id'][] = ['root', 'work', 'seed'];

/** `firecracker` arguments: the API socket and the VM id (the id also lets isSameProcess recognise it). */
export function firecrackerArgv(spec: Pick<LaunchSpec, 'vmId' | 'controlSocketPath'>): string[] {
  if (!INSTANCE_ID.test(spec.vmId))
    throw new BangerError(
      ErrorCode.InvalidArgument,
      `VM id '${spec.vmId}' cannot be a Firecracker instance id (1-64 characters, letters, digits and '-')`,
    );
  return ['--api-sock', spec.controlSocketPath, '--id', spec.vmId];
}

/** The kernel command line with the arguments Firecracker needs appended (see FIRECRACKER_REQUIRED_BOOT_ARGS). */
export function firecrackerBootArgs(cmdline: string): string {
  const args = cmdline
    .trim()
    .split(/\s+/)
    .filter((a) => a !== '');
  const keys = new Set(args.map((a) => a.split('=')[0]));
  for (const req of FIRECRACKER_REQUIRED_BOOT_ARGS) {
    if (!keys.has(req.split('=')[0])) args.push(req);
  }
  return args.join(' ');
}

/**
 * The pre-boot requests that configure a Firecracker VM, in the order they are sent; `INSTANCE_START`
 * follows them. Throws a BangerError for a spec Firecracker cannot run (qcow2 disks, user networking, TCG).
 *
 * Drives are sent root, work, seed: Firecracker attaches the root device first and the others in the order
 * they were created, so the guest sees them as vda, vdb, vdc like under QEMU. With `is_root_device`
 * Firecracker also appends `root=/dev/vda rw|ro` to the command line.
 */
export function firecrackerRequests(spec: LaunchSpec): FirecrackerRequest[] {
  if (spec.accel !== 'kvm')
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `Firecracker needs KVM; it cannot run with accel '${spec.accel}'`,
      {
        hint: 'use the qemu driver for software emulation (TCG)',
      },
    );
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32)
    throw new BangerError(ErrorCode.InvalidArgument, `Firecracker runs 1 to 32 vCPUs, not ${spec.vcpus}`);
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 1)
    throw new BangerError(ErrorCode.InvalidArgument, `memory must be a whole number of MiB, not ${spec.memoryMib}`);
  if (spec.kernelPath === '') throw new BangerError(ErrorCode.InvalidArgument, 'Firecracker needs a kernel image path');

  const reqs: FirecrackerRequest[] = [
    {
      method: 'PUT',
      path: '/machine-config',
      body: { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMib, smt: false },
    },
    {
      method: 'PUT',
      path: '/boot-source',
      body: {
        kernel_image_path: spec.kernelPath,
        ...(spec.initrdPath !== '' ? { initrd_path: spec.initrdPath } : {}),
        boot_args: firecrackerBootArgs(spec.kernelCmdline),
      },
    },
    { method: 'PUT', path: '/serial', body: { serial_out_path: inWorkDir(spec, spec.consoleLogPath) } },
  ];

  for (const disk of orderedDisks(spec.disks)) {
    reqs.push({
      method: 'PUT',
      path: `/drives/${disk.id}`,
      body: {
        drive_id: disk.id,
        path_on_host: inWorkDir(spec, disk.path),
        is_root_device: disk.id === 'root',
        is_read_only: disk.readOnly,
      },
    });
  }

  const net = tapOf(spec);
  reqs.push({
    method: 'PUT',
    path: `/network-interfaces/${FIRECRACKER_IFACE_ID}`,
    body: { iface_id: FIRECRACKER_IFACE_ID, host_dev_name: net.tapName, guest_mac: net.mac.toLowerCase() },
  });

  if (spec.channelSocketPath !== undefined) {
    reqs.push({
      method: 'PUT',
      path: '/vsock',
      body: { guest_cid: FIRECRACKER_GUEST_CID, uds_path: spec.channelSocketPath },
    });
  }
  return reqs;
}

/**
 * The one request that resumes a saved guest on a fresh Firecracker process (in place of the boot requests
 * and InstanceStart): the saved state, its memory file mapped copy-on-write, the CPUs running once loaded,
 * this VM's own tap and vsock socket in place of the source VM's. The disks are the saved drives' paths,
 * relative to the process's directory (`inWorkDir`), so they are this VM's copies.
 */
export function firecrackerLoadRequest(spec: LaunchSpec): FirecrackerRequest {
  const saved = spec.incoming;
  if (!saved) throw new BangerError(ErrorCode.Internal, 'firecrackerLoadRequest needs a saved state');
  if (saved.ram !== 'file')
    throw new BangerError(ErrorCode.FailedPrecondition, `Firecracker restores memory from a file; this state has it in its stream (${saved.ram})`);
  if (spec.accel !== 'kvm')
    throw new BangerError(ErrorCode.FailedPrecondition, `Firecracker needs KVM; it cannot run with accel '${spec.accel}'`);
  const net = tapOf(spec);
  return {
    method: 'PUT',
    path: '/snapshot/load',
    body: {
      snapshot_path: saved.statePath,
      mem_backend: { backend_type: 'File', backend_path: saved.ramPath },
      resume_vm: true,
      network_overrides: [{ iface_id: FIRECRACKER_IFACE_ID, host_dev_name: net.tapName }],
      ...(spec.channelSocketPath !== undefined ? { vsock_override: { uds_path: spec.channelSocketPath } } : {}),
    },
  };
}

/**
 * `path` as Firecracker is given it: relative to the VM's directory when it lies directly in it (Firecracker
 * runs there, and a saved state records the names it was given), else as it is.
 */
export function inWorkDir(spec: Pick<LaunchSpec, 'workDir'>, path: string): string {
  return spec.workDir !== undefined && dirname(path) === spec.workDir ? basename(path) : path;
}

/** The spec's tap, refusing the user networking only QEMU has. */
function tapOf(spec: LaunchSpec): { tapName: string; mac: string } {
  const net = spec.network;
  if (net.mode !== 'tap')
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `Firecracker needs tap networking; network mode '${net.mode}' (userspace forwards) is a QEMU feature`,
      { hint: 'give this VM tap networking, or use the qemu driver' },
    );
  if (!IFNAME.test(net.tapName))
    throw new BangerError(
      ErrorCode.InvalidArgument,
      `'${net.tapName}' is not a valid tap device name (at most 15 characters)`,
    );
  if (!MAC_RE.test(net.mac)) throw new BangerError(ErrorCode.InvalidArgument, `'${net.mac}' is not a MAC address`);
  return net;
}

/** The disks in guest order (root, work, seed), refusing what Firecracker cannot attach. */
function orderedDisks(disks: readonly DiskSpec[]): DiskSpec[] {
  const seen = new Set<string>();
  for (const d of disks) {
    if (seen.has(d.id)) throw new BangerError(ErrorCode.InvalidArgument, `disk '${d.id}' is given twice`);
    seen.add(d.id);
    if (d.format === 'qcow2')
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `Firecracker cannot read qcow2 disks: disk '${d.id}' (${d.path}) is qcow2`,
        {
          hint: 'give Firecracker a raw disk (a sparse copy of the image, e.g. `cp --sparse=always`), or use the qemu driver',
        },
      );
  }
  if (!seen.has('root')) throw new BangerError(ErrorCode.InvalidArgument, 'Firecracker needs a root disk');
  return [...disks].sort((a, b) => DISK_ORDER.indexOf(a.id) - DISK_ORDER.indexOf(b.id));
}
