import { z } from 'zod';
import {
  ACCEL_CHOICES,
  ACCELS,
  NETWORK_MODES,
  RpcNotification,
  VM_STATES,
  VMM_CHOICES,
  VMM_NAMES,
  method,
  withProgress,
} from './common.js';
import { workspaceInfoSchema } from './workspace.js';

/** RPC methods of `banger vm`, and the exec/* notifications that carry a running command's streams. */

/** What the last identity sync put into a VM (paths and names, never contents). */
export const vmSyncInfoSchema = z.object({
  at: z.string(),
  /** The git config keys set in the guest's global config (user.name, user.email). */
  git: z.array(z.string()),
  /** Host public key files whose keys were added to the guest's /root/.ssh/authorized_keys. */
  sshKeys: z.array(z.string()),
  /** Configured files copied into the guest. */
  files: z.array(z.object({ host: z.string(), guest: z.string(), mode: z.string() })),
  /** What was skipped and why (a configured file missing on the host, say). */
  warnings: z.array(z.string()),
});
export type VmSyncInfo = z.infer<typeof vmSyncInfoSchema>;

/**
 * Whose identity a start syncs into the guest: `home` is the invoking user's home directory (the CLI and
 * the API send theirs; default: the daemon's). `sync: false` skips the sync (`--no-sync`).
 */
const syncOptions = {
  sync: z.boolean().optional(),
  home: z.string().startsWith('/').optional(),
};

export const vmInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  image: z.string(),
  state: z.enum(VM_STATES),
  vcpus: z.number(),
  memoryMib: z.number(),
  diskSizeMib: z.number(),
  vmm: z.enum(VMM_NAMES),
  accel: z.enum(ACCELS).nullable(),
  network: z.object({
    mode: z.enum(NETWORK_MODES),
    /** Where the host reaches the VM: its own loopback address (loopback mode) or its tap address. */
    hostAddress: z.string(),
    sshPort: z.number(),
    guestAddress: z.string(),
    egress: z.boolean(),
    /** Guest ports currently forwarded on hostAddress (loopback mode, while running). */
    forwardedPorts: z.array(z.number()),
    /**
     * How the daemon learns which ports the guest listens on: pushed by its guest agent, or polled over SSH
     * (no agent, or until it answers); null when not watched (stopped, tap networking).
     */
    portWatch: z.enum(['agent', 'ssh']).nullable(),
  }),
  dnsName: z.string(),
  pid: z.number().nullable(),
  /** How `vm exec` reaches the running guest: its agent, or SSH (an image without the agent); null when stopped. */
  channel: z.enum(['agent', 'ssh']).nullable(),
  /** False for a VM created with `--no-agent`: its guest agent is never started (commands go over SSH). */
  agent: z.boolean(),
  lastError: z.string().nullable(),
  /** Set when the stored state and what the daemon observes disagree. */
  problem: z.string().nullable(),
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  dir: z.string(),
  /** The VM's disks on the host: the size the guest sees and what each costs the host (allocated blocks). */
  disks: z.array(
    z.object({ id: z.enum(['root', 'work']), path: z.string(), virtualBytes: z.number(), hostBytes: z.number() }),
  ),
  /** The workspace imported into the VM, if any. */
  workspace: workspaceInfoSchema.nullable(),
  /** The last identity sync (at start or `vm sync`); null if none happened. */
  synced: vmSyncInfoSchema.nullable(),
});
export type VmInfo = z.infer<typeof vmInfoSchema>;

export const vmRefSchema = z.object({ name: z.string().min(1) });
export type VmRef = z.infer<typeof vmRefSchema>;

export const vmCreateParamsSchema = z.object({
  name: z.string().optional(),
  image: z.string().min(1).optional(),
  cpus: z.number().int().positive().optional(),
  memoryMib: z.number().int().positive().optional(),
  diskSizeMib: z.number().int().positive().optional(),
  vmm: z.enum(VMM_CHOICES).optional(),
  accel: z.enum(ACCEL_CHOICES).optional(),
  /** Boot it after creating it (vm run). */
  start: z.boolean().optional(),
  /** Let the guest reach the outside (off by default). */
  egress: z.boolean().optional(),
  /** Default: config.json's network.defaultMode. */
  network: z.enum(NETWORK_MODES).optional(),
  /**
   * The VM lives only as long as this client's connection (`vm run --rm`): the daemon deletes it when the
   * connection closes, and at once when creating or starting it fails or is cancelled.
   */
  rm: z.boolean().optional(),
  /** false: do not start the guest agent (commands, no sessions or stats, go over SSH). Default true. */
  agent: z.boolean().optional(),
  /** Restore a snapshot (name or id): its memory, processes and disks, with the new VM's own identity. */
  from: z.string().min(1).optional(),
  /** With `start`: false boots a new VM even when the image's warm pool has one parked (`--no-pool`). */
  pool: z.boolean().optional(),
  ...syncOptions,
  ...withProgress,
});
export type VmCreateParams = z.infer<typeof vmCreateParamsSchema>;

export const vmStartParamsSchema = vmRefSchema.extend({ ...syncOptions, ...withProgress });
export type VmStartParams = z.infer<typeof vmStartParamsSchema>;

export const vmSyncParamsSchema = vmRefSchema.extend({ home: syncOptions.home });
export type VmSyncParams = z.infer<typeof vmSyncParamsSchema>;

export const vmStopParamsSchema = vmRefSchema.extend({
  force: z.boolean().optional(),
  /** Seconds to wait for a graceful guest shutdown before forcing. */
  timeoutSeconds: z.number().positive().optional(),
});
export type VmStopParams = z.infer<typeof vmStopParamsSchema>;

export const vmDeleteParamsSchema = vmRefSchema.extend({
  /** Stop it first if it runs. */
  force: z.boolean().optional(),
});
export type VmDeleteParams = z.infer<typeof vmDeleteParamsSchema>;

/** vm.set: what to change; sizes apply at the VM's next start, the work disk only grows and only while stopped. */
export const vmSetParamsSchema = vmRefSchema.extend({
  cpus: z.number().int().positive().optional(),
  memoryMib: z.number().int().positive().optional(),
  diskSizeMib: z.number().int().positive().optional(),
});
export type VmSetParams = z.infer<typeof vmSetParamsSchema>;

export const vmLogsParamsSchema = vmRefSchema.extend({ tailBytes: z.number().int().positive().optional() });

export const vmExecParamsSchema = z.object({
  name: z.string().min(1),
  /** Client-chosen id that ties exec/* notifications to this request. */
  execId: z.string().min(1),
  argv: z.array(z.string()),
  /** Working directory in the guest. */
  cwd: z.string().optional(),
  tty: z.object({ rows: z.number().int(), cols: z.number().int(), term: z.string() }).optional(),
  /** The client will send exec/stdin notifications; otherwise stdin is closed at once. */
  stdin: z.boolean(),
});
export type VmExecParams = z.infer<typeof vmExecParamsSchema>;

export const vmSshTargetSchema = z.object({
  host: z.string(),
  port: z.number(),
  user: z.string(),
  identityFile: z.string(),
  knownHostsFile: z.string(),
  hostKeyAlias: z.string(),
});
export type VmSshTarget = z.infer<typeof vmSshTargetSchema>;

export const vmPortsSchema = z.object({
  name: z.string(),
  dnsName: z.string(),
  hostAddress: z.string(),
  ports: z.array(
    z.object({
      port: z.number(),
      /** The address the guest socket is bound to. */
      address: z.string(),
      /** Reported by the guest: escape it before a terminal sees it. */
      process: z.string().nullable(),
      /** Reachable from the host at hostAddress:port / dnsName:port. */
      forwarded: z.boolean(),
      url: z.string().nullable(),
    }),
  ),
});
export type VmPorts = z.infer<typeof vmPortsSchema>;

const deleted = z.object({ deleted: z.string() });

export const VmMethods = {
  create: method('vm.create', vmCreateParamsSchema, vmInfoSchema),
  start: method('vm.start', vmStartParamsSchema, vmInfoSchema),
  stop: method('vm.stop', vmStopParamsSchema, vmInfoSchema),
  restart: method('vm.restart', vmStartParamsSchema, vmInfoSchema),
  sync: method('vm.sync', vmSyncParamsSchema, vmSyncInfoSchema),
  delete: method('vm.delete', vmDeleteParamsSchema, deleted),
  list: method('vm.list', null, z.array(vmInfoSchema)),
  show: method('vm.show', vmRefSchema, vmInfoSchema),
  set: method('vm.set', vmSetParamsSchema, vmInfoSchema),
  logs: method('vm.logs', vmLogsParamsSchema, z.object({ console: z.string() })),
  exec: method('vm.exec', vmExecParamsSchema, z.object({ exitCode: z.number() })),
  sshTarget: method('vm.ssh-target', vmRefSchema, vmSshTargetSchema),
  ports: method('vm.ports', vmRefSchema, vmPortsSchema),
} as const;

/** Daemon → client: output of a running exec. `data` is base64. */
export const execOutputSchema = z.object({ execId: z.string(), stream: z.enum(['stdout', 'stderr']), data: z.string() });
export type ExecOutput = z.infer<typeof execOutputSchema>;
/** Client → daemon: stdin for a running exec; `eof` ends it. */
export const execInputSchema = z.object({ execId: z.string(), data: z.string().optional(), eof: z.boolean().optional() });
export type ExecInput = z.infer<typeof execInputSchema>;
/** Client → daemon: the client's terminal changed size. */
export const execResizeSchema = z.object({
  execId: z.string(),
  rows: z.number().int().positive(),
  cols: z.number().int().positive(),
});
export type ExecResize = z.infer<typeof execResizeSchema>;
/** Client -> daemon: deliver a signal to a running exec (the CLI sends SIGINT on the first Ctrl-C). */
export const EXEC_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const;
export const execSignalSchema = z.object({ execId: z.string(), signal: z.enum(EXEC_SIGNALS) });

export const ExecNotifications = {
  output: new RpcNotification('exec/output', execOutputSchema),
  stdin: new RpcNotification('exec/stdin', execInputSchema),
  resize: new RpcNotification('exec/resize', execResizeSchema),
  signal: new RpcNotification('exec/signal', execSignalSchema),
} as const;
