import { z } from 'zod';
import { NETWORK_MODES, VMM_NAMES, method, withProgress } from './common.js';
import { vmInfoSchema } from './vm.js';

/** RPC methods of `banger vm snapshot` and `banger snapshot`: saved running VMs that new VMs start from. */

export const snapshotInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** The VM it was taken of (its name then; the VM may be gone since). */
  sourceVm: z.string(),
  vmm: z.enum(VMM_NAMES),
  image: z.string(),
  /** The source VM's networking; VMs made from the snapshot get the same, each with its own address. */
  network: z.enum(NETWORK_MODES),
  vcpus: z.number(),
  memoryMib: z.number(),
  diskSizeMib: z.number(),
  createdAt: z.string(),
  /** How long the source VM's CPUs were stopped while it was taken. */
  pausedMs: z.number(),
  /** Bytes the snapshot's own files take on the host (allocated blocks: device state and memory, frozen disk layers). */
  hostBytes: z.number(),
  dir: z.string(),
  /** VMs whose disks are layered on this snapshot (the source VM and VMs restored from it). */
  dependents: z.array(z.string()),
  /**
   * False for what a daemon killed while taking a snapshot left: the source VM was already moved onto layers
   * over its frozen disks, so those are kept (as this snapshot), but the saved memory may be partial and is
   * never restored. It is deleted like any snapshot once no VM's disks are layered on it.
   */
  restorable: z.boolean(),
  /** Taken by `vm fork`: deleted with the last VM (or snapshot) that uses it. */
  madeByFork: z.boolean(),
});
export type SnapshotInfo = z.infer<typeof snapshotInfoSchema>;

export const snapshotRefSchema = z.object({ name: z.string().min(1) });

export const snapshotCreateParamsSchema = z.object({
  /** The running VM to snapshot. */
  vm: z.string().min(1),
  name: z.string().optional(),
});
export type SnapshotCreateParams = z.infer<typeof snapshotCreateParamsSchema>;

export const vmForkParamsSchema = z.object({
  /** The running VM to copy. */
  vm: z.string().min(1),
  count: z.number().int().positive().max(16),
  /** Forks are named PREFIX-1..N (default: the VM's name + '-fork'). */
  name: z.string().optional(),
  ...withProgress,
});
export type VmForkParams = z.infer<typeof vmForkParamsSchema>;

export const SnapshotMethods = {
  create: method('snapshot.create', snapshotCreateParamsSchema, snapshotInfoSchema),
  list: method('snapshot.list', null, z.array(snapshotInfoSchema)),
  show: method('snapshot.show', snapshotRefSchema, snapshotInfoSchema),
  /** Refused (FailedPrecondition) while a VM's disks are layered on it. */
  delete: method('snapshot.delete', snapshotRefSchema, z.object({ deleted: z.string() })),
  /** A snapshot of a running VM, then that many VMs restored from it, started. */
  fork: method('vm.fork', vmForkParamsSchema, z.object({ snapshot: snapshotInfoSchema, vms: z.array(vmInfoSchema) })),
} as const;
