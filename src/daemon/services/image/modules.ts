/**
 * Kernel modules for the tiny initrd, resolved from the guest kernel's modules.dep. In Debian's cloud
 * kernel (bookworm, 6.1) virtio, virtio_mmio, virtio_blk, virtio_net and virtio_console are modules
 * (ext4, jbd2 and crc32c are built in) and modules are not compressed; compressed ones are handled too.
 */
import { BangerError, ErrorCode } from '../../../errors/index.js';

/** What the initrd loads: disks, network, the virtio-serial channel, and the virtio RNG if present. */
export const INITRD_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng'] as const;

export interface ResolvedModule {
  /** Canonical module name (underscores). */
  name: string;
  /** Path relative to /lib/modules/<version>/ as modules.dep lists it (may end in .ko.xz/.ko.zst/.ko.gz). */
  path: string;
}

const canonical = (name: string) => name.replace(/-/g, '_');
const moduleName = (path: string) => canonical((path.split('/').pop() ?? path).replace(/\.ko(\.(xz|zst|gz))?$/, ''));

/** Which image and kernel the modules are resolved for, so an error can name them. */
export interface ModuleContext {
  image: string;
  kernelVersion: string;
}

/**
 * Every module `wanted` needs, dependencies first (the order insmod must follow). Built-in modules are
 * skipped. Throws FailedPrecondition when a wanted module is neither a module nor built in.
 */
export function resolveModules(
  modulesDep: string,
  modulesBuiltin: string,
  wanted: readonly string[],
  context?: ModuleContext,
): ResolvedModule[] {
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const list = line
      .slice(colon + 1)
      .split(/\s+/)
      .filter(Boolean);
    deps.set(moduleName(path), { path, deps: list.map(moduleName) });
  }
  const builtin = new Set(
    modulesBuiltin
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .map(moduleName),
  );
  const out: ResolvedModule[] = [];
  const seen = new Set<string>();
  const visit = (name: string, chain: string[]) => {
    if (seen.has(name) || builtin.has(name)) return;
    const entry = deps.get(name);
    if (!entry)
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `kernel module ${name} (needed by ${chain.join(' <- ') || 'the initrd'}) is neither a module nor built into ` +
          (context ? `kernel ${context.kernelVersion} of image '${context.image}'` : 'the guest kernel'),
        {
          hint: context
            ? `the guest kernel package changed: rebuild with \`banger image build --force ${context.image}\` to take the mirror's current kernel, and report it if the module is still missing`
            : 'rebuild the image with `banger image build --force NAME`',
        },
      );
    seen.add(name);
    // modules.dep lists dependencies so that the last one loads first.
    for (const d of [...entry.deps].reverse()) visit(d, [name, ...chain]);
    out.push({ name, path: entry.path });
  };
  for (const w of wanted) visit(canonical(w), []);
  return out;
}
