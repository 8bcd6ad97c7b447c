import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import type { AccelChoice as AccelRequest } from '../../protocol/common.js';
import type { Logger } from '../../shared/logger.js';
import { guestKernelArgs, hostTscKhz } from '../guest/init/cmdline.js';
import { KvmProbeCache, guestKernelId, probeKvm, resolveAccel, type KvmProbeResult } from '../vmm/accel.js';
import type { QemuDriver } from '../vmm/qemu/driver.js';
import type { Accel } from '../vmm/driver.js';
import type { ReadyImage } from './image/service.js';
import type { AccelResolver } from './vm/boot.js';
import { KeyedMutex } from './locks.js';

/**
 * Decides KVM vs TCG by booting the image's kernel under KVM once (probe), caching the verdict per
 * host kernel, QEMU version and guest kernel. One probe at a time (`probing` lock).
 */
export class KvmAccelResolver implements AccelResolver {
  private readonly probing = new KeyedMutex();
  private last: KvmProbeResult | undefined;

  constructor(
    private readonly d: { qemu: QemuDriver; cache: KvmProbeCache; log: Logger; kvmDevice?: string },
  ) {}

  async resolve(requested: AccelRequest, image: ReadyImage, signal?: AbortSignal): Promise<{ accel: Accel; notice?: string }> {
    return resolveAccel(requested, () => this.verdict(image, signal));
  }

  async kvmUsable(image: ReadyImage, signal?: AbortSignal): Promise<boolean> {
    return (await this.verdict(image, signal)).usable;
  }

  /** The last verdict this daemon saw, for `banger doctor` (undefined before any probe). */
  lastVerdict(): KvmProbeResult | undefined {
    return this.last;
  }

  async verdict(image: ReadyImage, signal?: AbortSignal): Promise<KvmProbeResult> {
    return this.probing.run('kvm', async () => {
      const avail = await this.d.qemu.availability(signal);
      if (!avail.ok || !avail.binary) return { usable: false, reason: avail.reason ?? 'qemu is not installed' };
      const key = {
        hostKernel: release(),
        qemuVersion: this.d.qemu.version ?? 'unknown',
        guestKernel: await guestKernelId(image.kernelPath),
      };
      const tscKhz = hostTscKhz(await readFile('/proc/cpuinfo', 'utf8').catch(() => ''));
      const extra = guestKernelArgs({ tscKhz }).filter((a) => a.startsWith('tsc') || a.startsWith('lpj'));
      const result = await this.d.cache.getOrProbe(key, async () => {
        this.d.log.info({ kernel: image.kernelPath }, 'probing KVM with a test boot');
        const r = await probeKvm({
          binary: avail.binary!,
          kernelPath: image.kernelPath,
          initrdPath: image.initrdPath,
          extraCmdline: extra.join(' '),
          signal,
          kvmDevice: this.d.kvmDevice,
        });
        this.d.log.info({ usable: r.usable, reason: r.reason }, 'KVM probe finished');
        return r;
      });
      this.last = result;
      return result;
    }, signal);
  }
}
