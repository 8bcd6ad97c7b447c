import { mkdir, writeFile } from 'node:fs/promises';
import type { ProgressEvent } from '../../../protocol/common.js';
import { dnsName } from '../../../protocol/names.js';
import type { VmPaths } from '../../../shared/paths.js';
import type { CommandRunner } from '../../../shared/command.js';
import { generateEd25519 } from '../../guest/keys.js';
import type { VmmDriver } from '../../vmm/driver.js';

/**
 * Makes a new VM's files, reporting each named step: the root disk (a qcow2 overlay over the image where the
 * driver takes one, else a sparse copy), the work disk (sparse ext4) and the VM's own SSH host key. The
 * known_hosts entry is written last: reconcile takes a VM without it for a create that never finished.
 */
export async function makeVmFiles(
  o: {
    vp: VmPaths;
    name: string;
    rootfsPath: string;
    diskSizeMib: number;
    driver: VmmDriver;
    run: CommandRunner;
    progress: (ev: ProgressEvent) => void;
  },
  signal?: AbortSignal,
): Promise<void> {
  const { vp, run } = o;
  const step = (step: string, index: number) => o.progress({ kind: 'step', step, index, total: 3 });
  step('create root disk', 1);
  await mkdir(vp.dir, { recursive: true, mode: 0o700 });
  if (o.driver.features.has('qcow2')) {
    // Copy-on-write overlay: creating it never copies the image.
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', o.rootfsPath, '-F', 'raw', vp.rootDisk], { signal });
  } else {
    await run('cp', ['--sparse=always', '--reflink=auto', o.rootfsPath, vp.rootDiskRaw], { signal });
  }
  step('create work disk', 2);
  await run('truncate', ['-s', `${o.diskSizeMib}M`, vp.workDisk], { signal });
  await run('mkfs.ext4', ['-q', '-F', '-L', 'work', '-E', 'root_owner=0:0', vp.workDisk], { signal });
  step('generate host key', 3);
  const hostKey = generateEd25519(dnsName(o.name));
  await writeFile(vp.hostKeyPrivate, hostKey.privateKey, { mode: 0o600 });
  await writeFile(vp.hostKeyPublic, hostKey.publicKey + '\n', { mode: 0o644 });
  await writeFile(vp.knownHosts, `${dnsName(o.name)} ${hostKey.publicKey}\n`, { mode: 0o644 });
}
