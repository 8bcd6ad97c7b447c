/**
 * The contract between banger's VM service and a virtual machine monitor.
 *
 * A driver is a small lifecycle interface plus declared features: the VM service asks for a feature
 * (`driver.features.has('qcow2')`), never for a driver's name. Drivers are registered in an explicit
 * map built in daemon/daemon.ts.
 */

import type { Duplex } from 'node:stream';
import type { Accel, VmmName } from '../../protocol/common.js';

export type { Accel, VmmName };

export type VmmFeature =
  /** Boots from a qcow2 overlay (copy-on-write root disk without device-mapper). */
  | 'qcow2'
  /** Userspace networking with port forwards (no tap, no root networking). */
  | 'userNetworking'
  /** Tap device networking. */
  | 'tap'
  /** Host<->guest byte channel over virtio-serial exposed as a host unix socket. */
  | 'virtioSerial'
  /** Host<->guest channel over virtio-vsock. */
  | 'vsock'
  /** Software emulation when KVM is not usable. */
  | 'tcg'
  /** Boots the compressed kernel (bzImage) and initrd that banger's images carry. */
  | 'bzImage';

export interface DiskSpec {
  /** Stable identifier; also the order the guest sees them: root=vda, work=vdb, seed=vdc. */
  id: 'root' | 'work' | 'seed';
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
}

export type NetworkSpec =
  | {
      mode: 'user';
      /** Host address the forwards bind to (a loopback address). */
      hostAddress: string;
      /** Host port forwarded to the guest's port 22. */
      sshHostPort: number;
      /** Whether the guest may reach addresses outside itself (QEMU: restrict=off). */
      egress: boolean;
      mac: string;
    }
  | {
      mode: 'tap';
      tapName: string;
      mac: string;
    };

export interface LaunchSpec {
  vmId: string;
  name: string;
  vcpus: number;
  memoryMib: number;
  accel: Accel;
  kernelPath: string;
  initrdPath: string;
  /** Full kernel command line (see guest/cmdline.ts). */
  kernelCmdline: string;
  disks: DiskSpec[];
  network: NetworkSpec;
  /** Where the guest's serial console is written. */
  consoleLogPath: string;
  /** Where the VMM process's own stdout/stderr go. */
  vmmLogPath: string;
  /** Control socket: QMP for QEMU, the API socket for Firecracker. */
  controlSocketPath: string;
  /** Optional host<->guest channel (virtio-serial or vsock), a unix socket path on the host. */
  channelSocketPath?: string;
  /**
   * A second virtio-serial port, named `banger.bulk`, for bulk stdin into the guest (daemon/guest/bulk.ts): a unix
   * socket path on the host. Only with `channelSocketPath`, on a VMM with virtio-serial.
   */
  bulkSocketPath?: string;
  /**
   * The VM's own directory, which holds its disks and console log. A VMM that records file paths in a saved
   * state (Firecracker) runs there and is given those files by relative names, so a VM restored from the state
   * in another directory opens its own copies, not the source VM's.
   */
  workDir?: string;
  /**
   * Resume a saved guest instead of booting the kernel: what `snapshots.save` wrote. The spec's machine
   * (vCPUs, memory, disks, devices) must be the saved one's.
   */
  incoming?: SavedState;
}

/**
 * Where a saved guest's RAM is (QEMU's terms; a VMM that always writes a memory file says 'file'):
 *  - 'file': in its own file. A restored VM maps it private, copy-on-write, so VMs restored from one snapshot
 *    share the pages none of them wrote (the host's page cache holds one copy), and loading copies nothing.
 *  - 'stream': in the state stream, under the RAM backend's block (a VM whose RAM could not be copied out,
 *    e.g. one itself restored from a file). It is read into the restored VM's own memory.
 *  - 'stream-machine': in the state stream, under the machine's built-in RAM block (a VM that a daemon from
 *    before RAM backends booted); restored into built-in RAM likewise.
 */
export type SavedRam = 'file' | 'stream' | 'stream-machine';

/** A saved guest, as `snapshots.save` wrote it. */
export interface SavedState {
  /** Device state, and the RAM unless `ram` is 'file'. */
  statePath: string;
  /** The RAM when `ram` is 'file'. */
  ramPath: string;
  ram: SavedRam;
}

/**
 * What is true right now about a running VMM process. Kept in memory and in the VM's handles.json
 * so a restarted daemon can find and verify it again.
 */
export interface VmHandle {
  vmm: VmmName;
  pid: number;
  /** Process start time (clock ticks since boot, /proc/PID/stat field 22): tells a reused pid apart. */
  startTime: number;
  accel: Accel;
  controlSocketPath: string;
  /** The host end of the VM's bulk port, when it was launched with one (LaunchSpec.bulkSocketPath). */
  bulkSocketPath?: string;
}

export interface DriverAvailability {
  ok: boolean;
  /** Why the driver cannot run here, and what would fix it. */
  reason?: string;
  /** Resolved binary path when ok. */
  binary?: string;
}

/** A TCP forward from a host address and port to a guest port (user networking). */
export interface PortForward {
  hostAddress: string;
  hostPort: number;
  guestPort: number;
}

/** Capability: adding and removing port forwards while the VM runs. */
export interface PortForwarding {
  addForward(handle: VmHandle, f: PortForward, signal?: AbortSignal): Promise<void>;
  removeForward(handle: VmHandle, f: PortForward, signal?: AbortSignal): Promise<void>;
}

/** Capability: saving a running guest (memory, device state, a point-in-time of its disks) and resuming it. */
export interface VmmSnapshots {
  /**
   * How a snapshot holds the disks as they were at its instant:
   *  - 'layers': `save` moves the running guest onto new qcow2 layers (`disks`' `overlayPath`) over its current
   *    files, which from then on are never written again and become the snapshot's: nothing is copied (QEMU).
   *  - 'copies': the VMM cannot switch a running guest's disks (Firecracker: raw files, no block-job API), so
   *    `disks` is empty and the caller copies the files in `whilePaused`.
   */
  readonly disks: 'layers' | 'copies';
  /**
   * Stops the guest's CPUs; switches each listed disk onto `overlayPath` (an existing qcow2 file whose backing
   * is the disk's current file); writes device state to `statePath` and the RAM to `ramPath` (or, where it
   * cannot be copied out, into the state stream: the result's `ram` says which); runs `whilePaused`; resumes
   * the guest. Resolves with how long the CPUs were stopped. On failure the guest is resumed where it can be.
   */
  save(
    handle: VmHandle,
    o: { disks: { id: string; overlayPath: string }[]; statePath: string; ramPath: string; whilePaused?: () => Promise<void> },
    signal?: AbortSignal,
  ): Promise<{ pausedMs: number; ram: SavedRam }>;
  /** Resolves once a VM launched with `incoming` has loaded it and its CPUs run. */
  waitRestored(handle: VmHandle, deadline: number, signal?: AbortSignal): Promise<void>;
}

/** Capability: stopping a running guest's CPUs in place and starting them again (warm pools park VMs so). */
export interface VmmPausing {
  /** Stops the guest's CPUs; the VMM process, memory and devices stay. */
  pause(handle: VmHandle, signal?: AbortSignal): Promise<void>;
  /** Starts them again. */
  resume(handle: VmHandle, signal?: AbortSignal): Promise<void>;
}

/** Calls a driver makes while it launches a VM. */
export interface LaunchHooks {
  /**
   * Called once the VMM process exists, before the driver waits for it to answer, so the caller can record
   * it at once: a daemon killed during that wait must leave a process the next daemon can find.
   */
  onSpawned?(handle: VmHandle): Promise<void>;
}

export interface VmmDriver {
  readonly name: VmmName;
  readonly features: ReadonlySet<VmmFeature>;

  /** The control socket a VM of this driver uses, out of the VM's paths (QMP for QEMU, the API for Firecracker). */
  controlSocketPath(vp: { qmpSocket: string; apiSocket: string }): string;

  /** Whether the VMM binary is present and runnable on this host. Never hangs. */
  availability(signal?: AbortSignal): Promise<DriverAvailability>;

  /**
   * Starts the VMM detached from the daemon (it must outlive a daemon restart) and resolves once the
   * guest is booting: the process is up and its control socket answers. Rejects with a BangerError
   * carrying the VMM's own error output when it exits early. On any failure the process is gone.
   */
  launch(spec: LaunchSpec, signal?: AbortSignal, hooks?: LaunchHooks): Promise<VmHandle>;

  /**
   * Whether `handle` still refers to a live VMM process of VM `vmId`: the pid exists, its start time
   * matches, and its command line names this VM. Used by reconcile after a daemon restart.
   */
  isAlive(handle: VmHandle, vmId: string): Promise<boolean>;

  /**
   * Resolves when the VMM process has exited (works for adopted processes that are not our children).
   * Rejects only if `signal` aborts.
   */
  waitExit(handle: VmHandle, signal?: AbortSignal): Promise<void>;

  /**
   * Asks the guest to shut down through the VMM (ACPI power button, Ctrl-Alt-Del). Resolves when the
   * request was delivered, not when the guest is down. Drivers without such a request omit it.
   */
  requestShutdown?(handle: VmHandle, signal?: AbortSignal): Promise<void>;

  /** Ends the VMM process: SIGTERM, then SIGKILL after `graceMs`. Resolves once it is gone. */
  kill(handle: VmHandle, graceMs?: number): Promise<void>;

  /**
   * Opens a byte stream to the guest agent through the VM's channel socket (`LaunchSpec.channelSocketPath`),
   * for drivers whose channel needs more than a unix connect (Firecracker's vsock: a `CONNECT` handshake).
   * Where it is absent, connecting to the channel socket is the stream. Rejects with Unavailable when the
   * guest does not accept.
   */
  connectAgent?(channelSocketPath: string, opts?: { signal?: AbortSignal; timeoutMs?: number }): Promise<Duplex>;

  /** Present when the driver can change port forwards at runtime (QEMU user networking). */
  readonly portForwarding?: PortForwarding;

  /** Present when the driver can save a running guest and resume it in a new VM (QEMU). */
  readonly snapshots?: VmmSnapshots;

  /** Present when the driver can pause a running guest and resume it (QEMU). */
  readonly pausing?: VmmPausing;
}

/** Drivers by name, built once in daemon/daemon.ts. */
export type DriverRegistry = ReadonlyMap<VmmName, VmmDriver>;
