import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { alreadyExists, failedPrecondition, invalidArgument } from '../../../errors/index.js';
import type { NetworkMode, ProgressEvent } from '../../../protocol/common.js';
import type { VmCreateParams } from '../../../protocol/vm.js';
import type { Paths } from '../../../shared/paths.js';
import type { CommandRunner } from '../../../shared/command.js';
import { userNetworkDefaults } from '../../../shared/user-network.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { DriverRegistry, VmmDriver, VmmName } from '../../vmm/driver.js';
import type { ImageService, ReadyImage } from '../image/service.js';
import { makeRestoredFiles, type RestoreSource } from '../snapshot/restore.js';
import { USER_NET, allocateLoopbackEndpoint } from './addresses.js';
import type { AccelResolver, TapNetworking } from './boot.js';
import { checkMachineSizes } from './disks.js';
import { makeVmFiles } from './files.js';
import { generateVmName, randomMac, validateVmName } from './names.js';
import { chooseVmm, explicitVmm, requireDriver } from './vmm-choice.js';

/**
 * The steps of `vm create`: what it settles before any file of the VM exists (its sizes and network mode,
 * from its options, the snapshot it is made from, or the defaults; its image and VMM), then its name, id,
 * MAC and endpoint, recorded in the store, then its files, and what undoes a create that failed.
 * VmService.create sequences these (the record under its create lock, the files under the VM's lifecycle
 * lock).
 */

export const VM_DEFAULTS = { cpus: 2, memoryMib: 1024, diskSizeMib: 4096, image: 'default' } as const;

/** What vm.create takes, minus the RPC plumbing; `restore`: the snapshot `from` names, resolved. */
export type VmCreateOptions = Omit<VmCreateParams, 'progressToken' | 'start' | 'sync' | 'home' | 'from' | 'pool'> & {
  /** A warm pool's VM, parked for `vm run` to take: the image name of its pool (services/pool). */
  parkFor?: string;
  restore?: RestoreSource;
};

/** The machine a new VM gets; InvalidArgument for what a snapshot fixes, or for sizes out of range. */
export function createShape(
  opts: VmCreateOptions,
  defaultNetwork: NetworkMode,
): { cpus: number; memoryMib: number; diskSizeMib: number; networkMode: NetworkMode } {
  const snap = opts.restore?.snapshot;
  if (snap && (opts.cpus !== undefined || opts.memoryMib !== undefined || opts.diskSizeMib !== undefined || opts.image !== undefined))
    throw invalidArgument('a VM made from a snapshot has the snapshot\'s image, CPUs, memory and disk size', 'drop --image, --cpus, --memory and --disk-size');
  const snapNetwork = snap?.network ?? 'loopback';
  if (snap && opts.network !== undefined && opts.network !== snapNetwork)
    throw invalidArgument(`a VM made from snapshot '${snap.name}' uses ${snapNetwork} networking, as its source did`, `drop --network ${opts.network}`);
  const cpus = snap?.vcpus ?? opts.cpus ?? VM_DEFAULTS.cpus;
  const memoryMib = snap?.memoryMib ?? opts.memoryMib ?? VM_DEFAULTS.memoryMib;
  const diskSizeMib = snap?.diskSizeMib ?? opts.diskSizeMib ?? VM_DEFAULTS.diskSizeMib;
  checkMachineSizes({ cpus, memoryMib, diskSizeMib });
  const networkMode = snap ? snapNetwork : (opts.network ?? defaultNetwork);
  return { cpus, memoryMib, diskSizeMib, networkMode };
}

/**
 * Settles a new VM before its record: a valid name, its shape, tap networking that works when asked for, its
 * image (built if need be, or the snapshot's) and its VMM with the driver for it.
 */
export async function planCreate(
  opts: VmCreateOptions,
  host: {
    tap: TapNetworking;
    images: Pick<ImageService, 'byIdReady' | 'ensureReady'>;
    drivers: DriverRegistry;
    accel: AccelResolver;
    defaultNetwork: NetworkMode;
  },
  progress: (ev: ProgressEvent) => void,
  signal?: AbortSignal,
): Promise<NewVm & { driver: VmmDriver }> {
  if (opts.name !== undefined) validateVmName(opts.name);
  const snap = opts.restore?.snapshot;
  const { cpus, memoryMib, diskSizeMib, networkMode } = createShape(opts, host.defaultNetwork);
  if (networkMode === 'tap') {
    const sup = await host.tap.supported(signal);
    if (!sup.ok) throw failedPrecondition(`tap networking is not available here: ${sup.reason}`, 'use --network loopback');
  }
  if (snap && opts.vmm !== undefined && opts.vmm !== 'auto' && opts.vmm !== snap.vmm)
    throw failedPrecondition(`snapshot '${snap.name}' was taken under ${snap.vmm}; it cannot resume under ${opts.vmm}`, `drop --vmm ${opts.vmm}`);
  // An explicit --vmm that cannot run here is refused before an image is built for it.
  const explicit = !snap && opts.vmm !== undefined && opts.vmm !== 'auto' ? await explicitVmm(opts.vmm, host.drivers, networkMode, signal) : undefined;
  const image = snap ? host.images.byIdReady(snap.imageId) : await host.images.ensureReady(opts.image ?? VM_DEFAULTS.image, progress, signal);
  const vmmName = snap ? snap.vmm : (explicit ?? (await chooseVmm('auto', image, host, networkMode, signal)));
  const driver = requireDriver(host.drivers, vmmName);
  return { opts, image, vmmName, driver, cpus, memoryMib, diskSizeMib, networkMode };
}

/** A VM about to be recorded: its options, the image and VMM chosen for it, and its shape. */
export interface NewVm {
  opts: VmCreateOptions;
  image: ReadyImage;
  vmmName: VmmName;
  cpus: number;
  memoryMib: number;
  diskSizeMib: number;
  networkMode: NetworkMode;
}

export interface NewVmRecordDeps {
  vms: VmRepo;
  tap: TapNetworking;
  paths: Paths;
  /** The daemon's uid: root's VMs get SSH on port 22 of their loopback address, others a free high port. */
  uid: () => number;
  now: () => Date;
}

/**
 * Names the VM (AlreadyExists for a name in use), gives it an id, a MAC and its endpoint, and inserts its
 * record in state `created`. A tap VM's tap and address exist from here on. Run under VmService's create
 * lock, so two creates never take one name.
 */
export async function insertVmRecord(vm: NewVm, d: NewVmRecordDeps, signal?: AbortSignal): Promise<VmRecord> {
  const { opts, image, vmmName, cpus, memoryMib, diskSizeMib, networkMode } = vm;
  const snap = opts.restore?.snapshot;
  const name = opts.name ?? generateVmName((n) => d.vms.byName(n) !== undefined);
  if (d.vms.byName(name))
    throw alreadyExists(`a VM named '${name}' already exists`, `pick another --name, or \`banger vm delete ${name}\``);
  const id = randomBytes(6).toString('hex');
  const now = d.now().toISOString();
  // A restored loopback guest's NIC keeps the snapshot's MAC (its saved device state carries it; nothing outside
  // the VM sees it). A tap one shares a bridge with its source and siblings: it gets its own, which the restore's
  // identity script gives the guest (restore.ts).
  const mac = snap && networkMode === 'loopback' ? snap.mac : randomMac();
  let endpoint: { hostAddress: string; sshPort: number; guestAddress: string };
  if (networkMode === 'tap') {
    // The tap and the guest's address exist from create on: the address is the VM's, like a name.
    const t = await d.tap.attach(id, { egress: opts.egress ?? false, mac }, signal);
    const ip = t.guestCidr.split('/')[0]!;
    endpoint = { hostAddress: ip, guestAddress: ip, sshPort: 22 };
  } else {
    const all = d.vms.list();
    const e = await allocateLoopbackEndpoint(
      new Set(all.map((v) => v.hostAddress)),
      d.vms.usedSshPorts(),
      d.uid() === 0,
      userNetworkDefaults(d.uid()).range,
    );
    endpoint = { ...e, guestAddress: USER_NET.ip };
  }
  const rec: VmRecord = {
    id,
    name,
    imageId: image.id,
    state: 'created',
    vcpus: cpus,
    memoryMib,
    diskSizeMib,
    vmm: vmmName,
    accelChoice: snap ? snap.accel : (opts.accel ?? 'auto'),
    accel: null,
    networkMode,
    ...endpoint,
    egress: snap?.egress ?? opts.egress ?? false,
    mac,
    dir: d.paths.vmDir(id),
    lastError: null,
    createdAt: now,
    startedAt: null,
    updatedAt: now,
    workspace: snap?.workspace ?? null,
    agent: snap?.agent ?? opts.agent ?? true,
    synced: null,
    pool: opts.parkFor ?? null,
  };
  d.vms.insert(rec);
  return rec;
}

/** Makes a just-recorded VM's files: overlays of the snapshot it is made from, or new disks over its image. */
export async function makeNewVmFiles(
  record: VmRecord,
  plan: NewVm & { driver: VmmDriver },
  d: { paths: Paths; run: CommandRunner },
  progress: (ev: ProgressEvent) => void,
  signal?: AbortSignal,
): Promise<void> {
  const vp = d.paths.vm(record.id);
  if (plan.opts.restore) await makeRestoredFiles(vp, plan.opts.restore, d.run, record.name, signal);
  else
    await makeVmFiles(
      { vp, name: record.name, rootfsPath: plan.image.rootfsPath, diskSizeMib: plan.diskSizeMib, driver: plan.driver, run: d.run, progress },
      signal,
    );
}

/** Undoes a create that failed after its record: its files, its tap and its record go. */
export async function undoCreate(record: VmRecord, d: { paths: Paths; tap: TapNetworking; vms: VmRepo }): Promise<void> {
  await rm(d.paths.vm(record.id).dir, { recursive: true, force: true });
  if (record.networkMode === 'tap') await d.tap.detach(record.id).catch(() => undefined);
  d.vms.delete(record.id);
}
