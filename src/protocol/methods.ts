import { NotificationType, ProgressType, RequestType } from 'vscode-jsonrpc';
import type {
  AccelChoice,
  DaemonStatus,
  DoctorReport,
  ImageInfo,
  ProgressEvent,
  VmInfo,
  VmmChoice,
  WorkspaceInfo,
} from './types.js';
import type { WireErrorData } from '../errors/wire.js';

/**
 * Every RPC method, declared once and imported by both the daemon and the client.
 * Methods are named noun.verb. Params that accept a progress token stream ProgressEvents for it.
 */

export interface WithProgress {
  /** Token under which the daemon reports ProgressEvents for this request. */
  progressToken?: string;
}

export const progressType = new ProgressType<ProgressEvent>();

function method<P, R>(name: string) {
  return new RequestType<P, R, WireErrorData>(name);
}

export interface VmRef {
  name: string;
}

export interface VmCreateParams extends WithProgress {
  name?: string;
  image?: string;
  cpus?: number;
  memoryMib?: number;
  diskSizeMib?: number;
  vmm?: VmmChoice;
  accel?: AccelChoice;
  /** Boot it after creating it (vm run). */
  start?: boolean;
  /** Let the guest reach the outside (off by default). */
  egress?: boolean;
  /** loopback (default): user networking behind a per-VM 127.x address; tap: a tap on banger's bridge. */
  network?: 'loopback' | 'tap';
}

export interface VmStopParams extends VmRef {
  force?: boolean;
  /** Seconds to wait for a graceful guest shutdown before forcing. */
  timeoutSeconds?: number;
}

export interface VmDeleteParams extends VmRef {
  /** Stop it first if it runs. */
  force?: boolean;
}

export interface VmExecParams {
  name: string;
  /** Client-chosen id that ties exec/* notifications to this request. */
  execId: string;
  argv: string[];
  /** Working directory in the guest. */
  cwd?: string;
  tty?: { rows: number; cols: number; term: string };
  /** The client will send exec/stdin notifications; otherwise stdin is closed at once. */
  stdin: boolean;
}

export interface VmSshTarget {
  host: string;
  port: number;
  user: string;
  identityFile: string;
  knownHostsFile: string;
  hostKeyAlias: string;
}

export interface VmPorts {
  name: string;
  dnsName: string;
  hostAddress: string;
  ports: {
    port: number;
    /** The address the guest socket is bound to. */
    address: string;
    process: string | null;
    /** Reachable from the host at hostAddress:port / dnsName:port. */
    forwarded: boolean;
    url: string | null;
  }[];
}

export interface NetworkStatus {
  defaultMode: 'loopback' | 'tap';
  loopback: { supported: true };
  tap: {
    supported: boolean;
    reason?: string;
    bridge?: { name: string; subnet: string; gateway: string; exists: boolean; up: boolean };
    rulesInstalled?: boolean;
    vms?: { vmId: string; name: string | null; tap: string; address: string; egress: boolean }[];
  };
}

export interface ImageBuildParams extends WithProgress {
  name: string;
  packages?: string[];
  /** Rebuild even when an image of that name exists (refused while VMs use it). */
  force?: boolean;
}

export interface WorkspacePrepareParams extends WithProgress {
  /** VM name. */
  name: string;
  /** Absolute path of the host checkout (or a directory inside it). */
  sourcePath: string;
  /** Absolute guest directory; default /root/<repo name>. */
  guestPath?: string;
  includeUntracked?: boolean;
}

export interface WorkspacePrepareResult {
  vm: string;
  workspace: WorkspaceInfo;
  /** Files and symlinks imported, and their bytes. */
  files: number;
  bytes: number;
  /** Untracked files left out (no --include-untracked). */
  skippedUntracked: number;
  /** Lines for the user: untracked files skipped, submodules, mise. */
  notices: string[];
}

export interface WorkspaceExportParams {
  name: string;
  /** Diff against this guest commit-ish instead of the import base. */
  baseCommit?: string;
  /** Only the changed-file list, no patch. */
  nameOnly?: boolean;
}

export interface WorkspaceChange {
  /** git's --name-status letter: A added, D deleted, M modified, T type changed. */
  status: string;
  path: string;
}

export interface WorkspaceExportResult {
  guestPath: string;
  /** The patch, base64 (binary-safe; `git apply`-able at the host repo's top level). Empty with nameOnly. */
  patch: string;
  files: WorkspaceChange[];
}

export const Methods = {
  daemonStatus: method<void, DaemonStatus>('daemon.status'),
  daemonStop: method<void, { stopping: true }>('daemon.stop'),
  doctorRun: method<void, DoctorReport>('doctor.run'),

  imageBuild: method<ImageBuildParams, ImageInfo>('image.build'),
  imageList: method<void, ImageInfo[]>('image.list'),
  imageShow: method<{ name: string }, ImageInfo>('image.show'),
  imageDelete: method<{ name: string }, { deleted: string }>('image.delete'),

  vmCreate: method<VmCreateParams, VmInfo>('vm.create'),
  vmStart: method<VmRef & WithProgress, VmInfo>('vm.start'),
  vmStop: method<VmStopParams, VmInfo>('vm.stop'),
  vmRestart: method<VmRef & WithProgress, VmInfo>('vm.restart'),
  vmDelete: method<VmDeleteParams, { deleted: string }>('vm.delete'),
  vmList: method<void, VmInfo[]>('vm.list'),
  vmShow: method<VmRef, VmInfo>('vm.show'),
  vmLogs: method<VmRef & { tailBytes?: number }, { console: string }>('vm.logs'),
  vmExec: method<VmExecParams, { exitCode: number }>('vm.exec'),
  vmSshTarget: method<VmRef, VmSshTarget>('vm.ssh-target'),
  vmPorts: method<VmRef, VmPorts>('vm.ports'),
  networkStatus: method<void, NetworkStatus>('network.status'),
  networkDown: method<void, NetworkStatus>('network.down'),
  vmWorkspacePrepare: method<WorkspacePrepareParams, WorkspacePrepareResult>('vm.workspace.prepare'),
  vmWorkspaceExport: method<WorkspaceExportParams, WorkspaceExportResult>('vm.workspace.export'),
} as const;

/** Daemon → client: output of a running exec. `data` is base64. */
export interface ExecOutput {
  execId: string;
  stream: 'stdout' | 'stderr';
  data: string;
}
/** Client → daemon: stdin for a running exec; `eof` ends it. */
export interface ExecInput {
  execId: string;
  data?: string;
  eof?: boolean;
}
export interface ExecResize {
  execId: string;
  rows: number;
  cols: number;
}

export const Notifications = {
  execOutput: new NotificationType<ExecOutput>('exec/output'),
  execInput: new NotificationType<ExecInput>('exec/stdin'),
  execResize: new NotificationType<ExecResize>('exec/resize'),
} as const;
