import { failedPrecondition } from '../../../errors/index.js';
import type { VmmChoice } from '../../../protocol/common.js';
import type { DriverRegistry, VmmDriver, VmmName } from '../../vmm/driver.js';
import type { ReadyImage } from '../image/service.js';
import type { AccelResolver } from './boot.js';

/**
 * Which VMM runs a VM: the driver registered under a name, and what `--vmm` (qemu, firecracker, auto)
 * resolves to on this host for an image, asking the drivers for their availability and features, never
 * deciding by a driver's name alone.
 */

/** The driver of `name`; FailedPrecondition when this daemon has none. */
export function requireDriver(drivers: DriverRegistry, name: VmmName): VmmDriver {
  const d = drivers.get(name);
  if (!d) throw failedPrecondition(`the ${name} driver is not available in this daemon`);
  return d;
}

/**
 * The VMM `--vmm` resolves to for `image` on this host: an explicit choice when its driver can run here and
 * boot banger's images, else FailedPrecondition; `auto` picks Firecracker where it can, else QEMU.
 */
export async function chooseVmm(
  choice: VmmChoice,
  image: ReadyImage,
  host: { drivers: DriverRegistry; accel: AccelResolver },
  signal?: AbortSignal,
): Promise<VmmName> {
  if (choice === 'qemu' || choice === 'firecracker') {
    const d = requireDriver(host.drivers, choice);
    const a = await d.availability(signal);
    if (!a.ok) throw failedPrecondition(`${choice} cannot run here: ${a.reason}`, 'run `banger doctor`');
    if (!d.features.has('bzImage')) {
      throw failedPrecondition(
        `${choice} needs an uncompressed kernel (vmlinux) and tap networking, which banger does not set up for it yet`,
        'use --vmm qemu',
      );
    }
    return choice;
  }
  // auto: Firecracker only where it can boot banger's images and run (binary + usable KVM); else QEMU.
  const fc = host.drivers.get('firecracker');
  if (fc && fc.features.has('bzImage') && (await fc.availability(signal)).ok && (await host.accel.kvmUsable(image, signal)))
    return 'firecracker';
  return 'qemu';
}
