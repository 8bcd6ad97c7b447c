import { failedPrecondition } from '../../../errors/index.js';
import type { NetworkMode, VmmChoice } from '../../../protocol/common.js';
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
 * The VMM an explicit `--vmm` names, when its driver can run here and give the VM its network mode; else
 * FailedPrecondition. It needs no image: a create checks it before it builds one.
 */
export async function explicitVmm(
  choice: 'qemu' | 'firecracker',
  drivers: DriverRegistry,
  networkMode: NetworkMode,
  signal?: AbortSignal,
): Promise<VmmName> {
  const d = requireDriver(drivers, choice);
  const a = await d.availability(signal);
  if (!a.ok) throw failedPrecondition(`${choice} cannot run here: ${a.reason}`, 'run `banger doctor`');
  if (!supportsNetwork(d, networkMode))
    throw failedPrecondition(
      `${choice} has no ${networkMode} networking: its VMs need --network tap`,
      choice === 'firecracker' ? 'add --network tap (tap networking needs root), or use --vmm qemu' : 'use --network tap',
    );
  return choice;
}

/**
 * The VMM `--vmm` resolves to for `image` and the VM's network mode on this host: an explicit choice as
 * {@link explicitVmm} says; `auto` picks Firecracker where it can (binary, usable KVM, a tap VM: it has no
 * user networking), else QEMU. A driver that boots only an uncompressed kernel is given the vmlinux extracted
 * from the image's bzImage (the launch step in boot.ts).
 */
export async function chooseVmm(
  choice: VmmChoice,
  image: ReadyImage,
  host: { drivers: DriverRegistry; accel: AccelResolver },
  networkMode: NetworkMode,
  signal?: AbortSignal,
): Promise<VmmName> {
  if (choice === 'qemu' || choice === 'firecracker') return explicitVmm(choice, host.drivers, networkMode, signal);
  const fc = host.drivers.get('firecracker');
  if (fc && supportsNetwork(fc, networkMode) && (await fc.availability(signal)).ok && (await host.accel.kvmUsable(image, signal)))
    return 'firecracker';
  return 'qemu';
}

function supportsNetwork(d: VmmDriver, mode: NetworkMode): boolean {
  return d.features.has(mode === 'tap' ? 'tap' : 'userNetworking');
}
