import { NO_AGENT_ARG, PROBE_ARG, ROOT_DEVICE } from './contract.js';

/** CONFIG_HZ of Debian's cloud kernel (bookworm, 6.1: CONFIG_HZ_250=y). */
export const GUEST_KERNEL_HZ = 250;

export interface GuestKernelArgsOptions {
  /** Host TSC frequency in kHz (see {@link hostTscKhz}). Without it a TCG boot hangs about 1 in 3. */
  tscKhz?: number | undefined;
  /** Probe mode: the initrd prints the probe marker and powers off at once. */
  probe?: boolean;
  /** Keep the guest agent from starting: the guest then reports itself ready without it. */
  noAgent?: boolean;
  /**
   * False: the guest maps every process at fixed addresses (`norandmaps`, i.e. kernel.randomize_va_space=0).
   * Default true. The daemon turns it off under TCG unless config.json `qemu.tcgGuestAslr` says otherwise
   * (why, with figures: that key's comment in shared/config.ts).
   */
  aslr?: boolean;
}

/**
 * The guest kernel's command line words banger needs. The VMM driver adds its own (e.g. the
 * virtio-mmio device list Firecracker needs) after these.
 */
export function guestKernelArgs(opts: GuestKernelArgsOptions = {}): string[] {
  const args = ['console=ttyS0', `root=${ROOT_DEVICE}`, 'rw', 'rootfstype=ext4', 'net.ifnames=0', 'panic=-1', 'quiet'];
  if (opts.tscKhz !== undefined && Number.isInteger(opts.tscKhz) && opts.tscKhz > 0) {
    // lpj is loops per jiffy of the TSC delay loop: kHz * 1000 / HZ.
    const lpj = Math.round((opts.tscKhz * 1000) / GUEST_KERNEL_HZ);
    args.push(`tsc_early_khz=${opts.tscKhz}`, `lpj=${lpj}`, 'tsc=reliable');
  }
  if (opts.probe) args.push(PROBE_ARG);
  if (opts.noAgent) args.push(NO_AGENT_ARG);
  if (opts.aslr === false) args.push('norandmaps');
  return args;
}

/** The host CPU's clock in kHz from /proc/cpuinfo text (first `cpu MHz` line), or undefined. */
export function hostTscKhz(cpuinfo: string): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$/m.exec(cpuinfo);
  if (!m?.[1]) return undefined;
  const khz = Math.round(Number(m[1]) * 1000);
  return Number.isFinite(khz) && khz > 0 ? khz : undefined;
}
