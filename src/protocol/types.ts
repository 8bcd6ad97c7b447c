/** Shapes that cross the daemon socket. Plain JSON; no runtime dependencies. */

export type VmState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'error';
export type VmmChoice = 'auto' | 'qemu' | 'firecracker';
export type AccelChoice = 'auto' | 'kvm' | 'tcg';

export interface ImageFileInfo {
  role: 'kernel' | 'initrd' | 'rootfs';
  path: string;
  sizeBytes: number;
  sha256: string;
}

export interface ImageInfo {
  id: string;
  name: string;
  status: 'building' | 'ready' | 'failed';
  kernelVersion: string | null;
  files: ImageFileInfo[];
  params: { suite: string; mirror: string; packages: string[] };
  createdAt: string;
  buildSeconds: number | null;
  /** Names of VMs whose disks are layered on this image. */
  usedBy: string[];
  error: string | null;
}

export interface VmInfo {
  id: string;
  name: string;
  image: string;
  state: VmState;
  vcpus: number;
  memoryMib: number;
  diskSizeMib: number;
  vmm: 'qemu' | 'firecracker';
  accel: 'kvm' | 'tcg' | null;
  network: {
    mode: 'loopback' | 'tap';
    /** Where the host reaches the VM: its own loopback address (loopback mode) or its tap address. */
    hostAddress: string;
    sshPort: number;
    guestAddress: string;
    egress: boolean;
    /** Guest ports currently forwarded on hostAddress (loopback mode, while running). */
    forwardedPorts: number[];
  };
  dnsName: string;
  pid: number | null;
  lastError: string | null;
  /** Set when the stored state and what the daemon observes disagree. */
  problem: string | null;
  createdAt: string;
  startedAt: string | null;
  dir: string;
  /** The workspace imported into the VM, if any. */
  workspace: WorkspaceInfo | null;
}

/** A host git checkout imported into a VM (`banger vm workspace prepare`). */
export interface WorkspaceInfo {
  /** Absolute directory of the workspace in the guest. */
  guestPath: string;
  /** Top-level directory of the host checkout it came from. */
  sourcePath: string;
  /** The host's HEAD commit at import time; null for a repository without commits. */
  headCommit: string | null;
  /** The guest commit recording the imported state; exports diff against it. */
  baseCommit: string;
  includeUntracked: boolean;
  preparedAt: string;
}

export interface DaemonStatus {
  pid: number;
  version: string;
  home: string;
  socket: string;
  logFile: string;
  startedAt: string;
  vms: { total: number; running: number };
}

export type DoctorStatus = 'ok' | 'warn' | 'fail';
export interface DoctorCheck {
  name: string;
  status: DoctorStatus;
  detail: string;
  /** What to run or change to fix it; present when status is not ok. */
  fix?: string;
}
export interface DoctorReport {
  ok: boolean;
  checks: DoctorCheck[];
}

/** A unit of progress of a long operation; the CLI renders it as a spinner/bar, plain lines or JSON lines. */
export type ProgressEvent =
  | { kind: 'step'; step: string; index: number; total: number; detail?: string }
  | { kind: 'bytes'; step: string; done: number; total?: number; files?: number }
  | { kind: 'notice'; message: string }
  | { kind: 'log'; line: string };
