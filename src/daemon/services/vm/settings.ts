import { closeSync, openSync, readSync } from 'node:fs';
import { failedPrecondition, invalidArgument } from '../../../errors/index.js';
import type { VmInfo } from '../../../protocol/vm.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { VmPaths } from '../../../shared/paths.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { SPACE_NEEDED, activeDisks, asNoSpace, checkMachineSizes, ensureFreeSpace, diskFormat, fileUse, growWorkDisk, type FreeSpace } from './disks.js';

/** What `vm set` may change. */
export interface VmSettingsChange {
  cpus?: number;
  memoryMib?: number;
  diskSizeMib?: number;
}

/**
 * Applies `vm set` to a VM (the caller holds its lifecycle lock) and returns the record fields to store.
 * CPUs and memory are recorded and take effect at the next start, running or not. The work disk only grows,
 * only while the VM is stopped (its file and filesystem are grown on the host; the guest sees the new size at
 * its next boot); the new size is returned only once the grow succeeded, so a failure records nothing.
 */
export async function applyVmSettings(
  vm: VmRecord,
  change: VmSettingsChange,
  d: { running: boolean; vp: VmPaths; run: CommandRunner; freeSpace?: FreeSpace },
  signal?: AbortSignal,
): Promise<Partial<VmRecord>> {
  if (change.cpus === undefined && change.memoryMib === undefined && change.diskSizeMib === undefined)
    throw invalidArgument('nothing to change', 'give --cpus, --memory or --disk-size');
  checkMachineSizes(change);
  const patch: Partial<VmRecord> = {};
  if (change.cpus !== undefined) patch.vcpus = change.cpus;
  if (change.memoryMib !== undefined) patch.memoryMib = change.memoryMib;
  const disk = change.diskSizeMib;
  if (disk !== undefined && disk !== vm.diskSizeMib) {
    if (disk < vm.diskSizeMib)
      throw invalidArgument(
        `the work disk of VM '${vm.name}' cannot shrink (it is ${vm.diskSizeMib} MiB; asked for ${disk} MiB)`,
        `give --disk-size ${vm.diskSizeMib}M or more`,
      );
    if (d.running || vm.state === 'running')
      throw failedPrecondition(
        `the work disk of VM '${vm.name}' can only grow while the VM is stopped`,
        `stop it first: \`banger vm stop ${vm.name}\`, then \`banger vm set ${vm.name} --disk-size ${disk}M\` and start it again`,
      );
    if (diskFormat(activeDisks(d.vp).work) === 'qcow2')
      throw failedPrecondition(
        `the work disk of VM '${vm.name}' is layered on a snapshot and cannot grow`,
        `make a VM with a larger --disk-size and move the data, or keep its size`,
      );
    const what = `grow the work disk of VM '${vm.name}'`;
    // Growing writes filesystem metadata (block group descriptors, bitmaps): about what creating does.
    const needed = SPACE_NEEDED.create(disk);
    await ensureFreeSpace(d.vp.dir, needed, what, d.freeSpace);
    try {
      await growWorkDisk(d.run, d.vp.workDisk, vm.diskSizeMib, disk, signal);
    } catch (e) {
      throw asNoSpace(e, d.vp.dir, what, needed);
    }
    patch.diskSizeMib = disk;
  }
  return patch;
}

/** The VM's disks as `vm show` reports them: the size the guest sees and what each costs the host. */
export function vmDisks(vp: VmPaths, qcow2: boolean): VmInfo['disks'] {
  const disks: VmInfo['disks'] = [];
  const active = activeDisks(vp);
  const rootPath = qcow2 ? active.root : vp.rootDiskRaw;
  const root = fileUse(rootPath);
  if (root) disks.push({ id: 'root', path: rootPath, virtualBytes: (qcow2 ? qcow2VirtualSize(rootPath) : null) ?? root.sizeBytes, hostBytes: root.hostBytes });
  const work = fileUse(active.work);
  const workQcow2 = diskFormat(active.work) === 'qcow2';
  if (work)
    disks.push({
      id: 'work',
      path: active.work,
      virtualBytes: (workQcow2 ? qcow2VirtualSize(active.work) : null) ?? work.sizeBytes,
      hostBytes: work.hostBytes,
    });
  return disks;
}

/** The virtual size a qcow2 file's header records (big-endian u64 at offset 24); null when it is not qcow2. */
export function qcow2VirtualSize(path: string): number | null {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const h = Buffer.alloc(32);
    if (readSync(fd, h, 0, 32, 0) < 32 || h.readUInt32BE(0) !== 0x514649fb) return null;
    return Number(h.readBigUInt64BE(24));
  } catch {
    return null;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
