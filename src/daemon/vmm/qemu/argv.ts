import { invalidArgument } from '../../../errors/index.js';
import type { Accel, DiskSpec, LaunchSpec, NetworkSpec, SavedState } from '../driver.js';
import { IFNAME_RE, MAC_RE } from '../../../protocol/names.js';
import { shq } from '../../guest/shell.js';
import { BULK_PORT_NAME } from '../../guest/bulk.js';

/**
 * QEMU command lines as pure functions, pinned by test/unit/qemu-argv.test.ts.
 *
 * Machine: `microvm` with ACPI left on (the default): ACPI is what lets `poweroff -f` end QEMU and what
 * delivers `system_powerdown`; with `acpi=off` a guest poweroff hangs. Measured under TCG here:
 * `pit=off`/`pic=off` change nothing measurable in boot time, so the defaults stay.
 *
 * Disks: microvm gives virtio-mmio slots in command-line order, so the guest sees the disks as vda, vdb,
 * vdc in the order of `spec.disks` (verified in a real guest by test/integration/qemu-driver.test.ts).
 */

export interface QemuArgvOptions {
  /** Resume from a saved state (`-incoming`), e.g. `exec:cat state`. */
  incoming?: string;
  /** Size of TCG's translated-code cache in MiB (`tb-size`); QEMU's own default (1 GiB) when omitted. */
  tcgCacheMib?: number;
}

/** The `-incoming` value that loads a saved state file (QEMU 7.2 has no `file:` transport: `exec:` runs sh). */
export function incomingFromFile(path: string): string {
  return `exec:cat ${shq(path)}`;
}

/** The `migrate` URI that writes a state file. */
export function outgoingToFile(path: string): string {
  return `exec:cat > ${shq(path)}`;
}

/** The id of the RAM backend object: the RAM's migration block is named after it. */
export const RAM_BACKEND_ID = 'ram0';

/**
 * Where the guest's RAM lives. A boot (and a restore whose RAM is in the stream) gets a memfd mapped shared:
 * a snapshot copies it out as the RAM file while the CPUs are stopped and leaves it out of the state stream
 * (x-ignore-shared). A restore from a RAM file maps that file private: reads come from the host's page cache,
 * shared with every other VM restored from it, and only the pages the guest writes become its own. A state
 * saved from built-in RAM (a VM booted before RAM backends) names that block, so it is restored into one.
 */
export function memoryArgs(memoryMib: number, incoming?: SavedState): string[] {
  if (incoming?.ram === 'stream-machine') return [];
  const backend =
    incoming?.ram === 'file'
      ? `memory-backend-file,id=${RAM_BACKEND_ID},size=${memoryMib}M,mem-path=${qemuOptValue(incoming.ramPath)},share=off`
      : `memory-backend-memfd,id=${RAM_BACKEND_ID},size=${memoryMib}M,share=on`;
  return ['-object', backend, '-machine', `memory-backend=${RAM_BACKEND_ID}`];
}

/**
 * The `-incoming` value for a saved state. A RAM file needs the x-ignore-shared capability set before the
 * stream is read, which only QMP can do: QEMU waits ('defer') and the driver starts the load
 * (`migrate-set-capabilities`, then `migrate-incoming` with `incomingFromFile`).
 */
export function incomingArg(incoming: SavedState): string {
  return incoming.ram === 'file' ? 'defer' : incomingFromFile(incoming.statePath);
}

/** The `-name` value; it carries the VM id so a process can be told apart from a reused pid by its argv. */
export function qemuNameOption(vmId: string): string {
  return `guest=banger-${vmId},process=banger-${vmId}`;
}

/** Escapes a value for QEMU's `key=value,...` option syntax: a literal comma is written twice. */
export function qemuOptValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * The CPU under TCG: QEMU's `max` without ERMS and FSRM (fast `rep movsb`). With them the guest's kernel copies
 * and clears memory with `rep movsb`/`rep stosb`, which TCG runs a byte at a time; without them it uses `rep
 * movsq`/`rep stosq`. Measured in a 2-vCPU guest on this project's TCG host: a pipe moved 59 MB/s with them and
 * 227 MB/s without, a 20,000-file / 198 MiB workspace import took 52-54 s against 42-44 s, and 64 MiB into a
 * guest command 5.4-6.1 s against 3.7-3.9 s. A snapshot taken under plain `max` restores under this model
 * (checked: the guest keeps the copy routines it chose at boot, and TCG runs both).
 */
const TCG_CPU = 'max,-erms,-fsrm';

/**
 * Machine, accelerator and CPU: shared by a VM launch and the KVM boot probe so the probe tests what runs.
 * `tcgCacheMib` sizes TCG's translated-code cache (ignored under KVM, which translates nothing).
 */
export function qemuMachineArgs(accel: Accel, tcgCacheMib?: number): string[] {
  if (tcgCacheMib !== undefined && (!Number.isInteger(tcgCacheMib) || tcgCacheMib < 1))
    throw invalidArgument(`invalid TCG cache size ${tcgCacheMib} MiB: expected a whole number of MiB, 1 or more`);
  return [
    '-M',
    'microvm,x-option-roms=off,rtc=on',
    '-accel',
    accel === 'tcg' && tcgCacheMib !== undefined ? `tcg,tb-size=${tcgCacheMib}` : accel,
    '-cpu',
    accel === 'kvm' ? 'host' : TCG_CPU,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
  ];
}


function diskArgs(disk: DiskSpec): string[] {
  const drive = [
    `id=${disk.id}`,
    `file=${qemuOptValue(disk.path)}`,
    `format=${disk.format}`,
    'if=none',
    // Page-cache backed (works on tmpfs too, unlike cache=none's O_DIRECT); guest TRIM frees overlay space.
    'cache=writeback',
    'aio=threads',
    'discard=unmap',
  ];
  if (disk.readOnly) drive.push('readonly=on');
  return ['-drive', drive.join(','), '-device', `virtio-blk-device,drive=${disk.id},serial=banger-${disk.id}`];
}

function isLoopbackV4(addr: string): boolean {
  const parts = addr.split('.');
  return parts.length === 4 && parts[0] === '127' && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

function networkArgs(net: NetworkSpec): string[] {
  if (!MAC_RE.test(net.mac))
    throw invalidArgument(`invalid MAC address '${net.mac}': expected six hex pairs like 52:54:00:12:34:56`);
  const device = ['-device', `virtio-net-device,netdev=n0,mac=${net.mac}`];
  if (net.mode === 'user') {
    // The forward is the only way in; it must never listen beyond this host.
    if (!isLoopbackV4(net.hostAddress))
      throw invalidArgument(
        `the SSH forward must bind a loopback address, not '${net.hostAddress}'`,
        'use an address in 127.0.0.0/8, e.g. 127.0.0.1',
      );
    if (!Number.isInteger(net.sshHostPort) || net.sshHostPort < 1 || net.sshHostPort > 65535)
      throw invalidArgument(`invalid SSH host port ${net.sshHostPort}: expected 1-65535`);
    const netdev = [
      'user',
      'id=n0',
      // restrict=on: the guest reaches nothing but the forwards (no outbound traffic at all).
      `restrict=${net.egress ? 'off' : 'on'}`,
      `hostfwd=tcp:${net.hostAddress}:${net.sshHostPort}-:22`,
    ];
    return ['-netdev', netdev.join(','), ...device];
  }
  if (!IFNAME_RE.test(net.tapName)) throw invalidArgument(`invalid tap device name '${net.tapName}'`);
  return ['-netdev', `tap,id=n0,ifname=${net.tapName},script=no,downscript=no`, ...device];
}

/**
 * The arguments (without the binary) that start `spec` under QEMU. The process is expected to be spawned
 * with stdout/stderr going to `spec.vmmLogPath`; the guest console is appended to `spec.consoleLogPath`
 * (append mode, so the daemon can rotate it under a running QEMU).
 */
export function qemuArgv(spec: LaunchSpec, opts: QemuArgvOptions = {}): string[] {
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1)
    throw invalidArgument(`invalid vCPU count ${spec.vcpus}: expected 1 or more`);
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 64)
    throw invalidArgument(`invalid memory size ${spec.memoryMib} MiB: expected at least 64`);
  const seen = new Set<string>();
  for (const d of spec.disks) {
    if (seen.has(d.id)) throw invalidArgument(`disk '${d.id}' is listed twice`);
    seen.add(d.id);
  }

  const argv = [
    '-name',
    qemuNameOption(spec.vmId),
    ...qemuMachineArgs(spec.accel, opts.tcgCacheMib),
    '-smp',
    String(spec.vcpus),
    '-m',
    String(spec.memoryMib),
    ...memoryArgs(spec.memoryMib, spec.incoming),
    '-msg',
    'timestamp=on',
    // -nodefaults keeps microvm's ISA serial port (it is part of the machine, not a default device).
    '-chardev',
    `file,id=con0,path=${qemuOptValue(spec.consoleLogPath)},append=on`,
    '-serial',
    'chardev:con0',
    // QMP on a chardev (rather than `-qmp unix:...`) so the path goes through the escaping of qemuOptValue.
    '-chardev',
    `socket,id=qmp0,path=${qemuOptValue(spec.controlSocketPath)},server=on,wait=off`,
    '-mon',
    'chardev=qmp0,mode=control',
    '-kernel',
    spec.kernelPath,
    '-initrd',
    spec.initrdPath,
    '-append',
    spec.kernelCmdline,
    ...spec.disks.flatMap(diskArgs),
    ...networkArgs(spec.network),
  ];
  if (spec.channelSocketPath !== undefined) {
    argv.push(
      '-device',
      'virtio-serial-device',
      '-chardev',
      `socket,id=ch0,path=${qemuOptValue(spec.channelSocketPath)},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=ch0,name=banger.0',
    );
    if (spec.bulkSocketPath !== undefined)
      argv.push(
        '-chardev',
        `socket,id=ch1,path=${qemuOptValue(spec.bulkSocketPath)},server=on,wait=off`,
        '-device',
        `virtserialport,chardev=ch1,name=${BULK_PORT_NAME}`,
      );
  }
  const incoming = opts.incoming ?? (spec.incoming !== undefined ? incomingArg(spec.incoming) : undefined);
  if (incoming !== undefined) argv.push('-incoming', incoming);
  return argv;
}
