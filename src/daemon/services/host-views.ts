import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Paths } from '../../shared/paths.js';
import type { Logger } from '../../shared/logger.js';
import { renderKnownHosts, renderVmSshInclude } from '../../shared/ssh-config.js';
import type { VmRepo } from '../store/repos/vms.js';

/** Something else that must follow the set of VMs and their addresses (the DNS hosts block). */
export type VmAddressListener = (vms: { name: string; address: string }[]) => Promise<void> | void;

/**
 * Files on the host that mirror the VMs: the ssh_config include (`Host NAME.vm` blocks) and the
 * known_hosts with every VM's pinned host key, kept current whenever a VM is created, started or deleted.
 * Writes are atomic and skipped when nothing changed.
 */
export class HostViews {
  private last = '';
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly d: { paths: Paths; vms: VmRepo; log: Logger; listeners?: VmAddressListener[] },
  ) {}

  /** Schedules a rewrite; calls are serialised, so the last one always wins. */
  sync(): Promise<void> {
    this.pending = this.pending.then(() => this.write()).catch((e: unknown) => {
      this.d.log.warn({ err: (e as Error).message }, 'could not update host views of VMs');
    });
    return this.pending;
  }

  private async write(): Promise<void> {
    const vms = this.d.vms.list();
    const withKeys = await Promise.all(
      vms.map(async (v) => ({
        name: v.name,
        hostAddress: v.hostAddress,
        sshPort: v.sshPort,
        hostPublicKey: (await readFile(this.d.paths.vm(v.id).hostKeyPublic, 'utf8').catch(() => '')).trim(),
      })),
    );
    const include = renderVmSshInclude({
      identityFile: this.d.paths.sshPrivateKey,
      knownHostsFile: this.d.paths.sshKnownHosts,
      vms: withKeys,
    });
    const known = renderKnownHosts(withKeys.filter((v) => v.hostPublicKey !== ''));
    const key = include + '\0' + known;
    if (key === this.last) return;
    await atomicWrite(this.d.paths.sshKnownHosts, known);
    await atomicWrite(this.d.paths.sshInclude, include);
    for (const l of this.d.listeners ?? []) await l(vms.map((v) => ({ name: v.name, address: v.hostAddress })));
    this.last = key;
  }
}

async function atomicWrite(path: string, content: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  // ssh refuses included files that others can write: 0644.
  await writeFile(tmp, content, { mode: 0o644 });
  await rename(tmp, path);
}
