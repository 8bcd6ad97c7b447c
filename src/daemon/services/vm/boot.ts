import { readFile, writeFile } from 'node:fs/promises';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import { capLog } from '../../../shared/log-cap.js';
import type { Logger } from '../../../shared/logger.js';
import type { VmPaths } from '../../../shared/paths.js';
import { READY_AGENT_SUFFIX, READY_MARKER } from '../../guest/init/contract.js';
import { SshGuestSession } from '../../guest/ssh.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { Accel, LaunchSpec, SavedState, VmmDriver } from '../../vmm/driver.js';
import { elfKernelFor } from '../../vmm/vmlinux.js';
import type { ReadyImage } from '../image/service.js';
import type { TapAttachment } from '../network/tap.js';
import type { AccelChoice } from '../../../protocol/common.js';
import { USER_NET, isPortFree, pickFreePort } from './addresses.js';
import { EarlyBootStall, capConsoleLog, waitForConsoleLine, withConsoleTail } from './console.js';
import { activeDisks, diskFormat } from './disks.js';
import { writeHandles } from './handles.js';
import { newLiveVm, type LiveVm, type LiveVms } from './live.js';
import { buildSeedTar } from './seed.js';
import type { IdentitySync } from '../sync/service.js';

/** Decides the accelerator for a boot of `image`'s kernel: a real probe, cached. */
export interface AccelResolver {
  resolve(requested: AccelChoice, image: ReadyImage, signal?: AbortSignal): Promise<{ accel: Accel; notice?: string }>;
  /** Whether KVM is usable (cached answer or probe); used to pick a VMM. */
  kvmUsable(image: ReadyImage, signal?: AbortSignal): Promise<boolean>;
}

/** What booting needs of tap networking (see network/tap.ts). */
export interface TapNetworking {
  /** Whether tap mode can work on this host, and why not. */
  supported(signal?: AbortSignal): Promise<{ ok: boolean; reason?: string }>;
  /** Creates (or finds again) the VM's tap; the same VM keeps its address. */
  attach(vmId: string, opts: { egress: boolean; mac: string }, signal?: AbortSignal): Promise<TapAttachment>;
  detach(vmId: string, signal?: AbortSignal): Promise<void>;
  /** Removes what belongs to VMs not in `live`, recreates what live VMs miss. */
  reconcile(live: ReadonlySet<string>, signal?: AbortSignal): Promise<void>;
}

/** Builds the guest kernel command line for a boot of `vm` under `accel`. */
export type KernelCmdline = (vm: VmRecord, accel: Accel) => string;

export interface BootDeps {
  vms: VmRepo;
  live: LiveVms;
  accel: AccelResolver;
  tap: TapNetworking;
  kernelCmdline: KernelCmdline;
  /** banger's client public key, authorized in every guest. */
  authorizedKey: string;
  /** Told the bridge address when a tap VM starts (banger's DNS listens there for guests). */
  onTapAttached?: (gateway: string) => Promise<void>;
  now: () => Date;
  /** How long a boot may take until SSH answers. */
  bootTimeoutMs: number;
  /** How long a guest may print nothing before its VMM is started again (default SILENT_CONSOLE_MS). */
  silentConsoleMs?: number;
  log?: Logger;
  /** Syncs the invoking user's identity into the guest once it answers; omitted: no sync step does anything. */
  identity?: IdentitySync;
  /** The guest agent bundle the seed carries (the daemon's own); omitted: the guest runs its image's. */
  agentBundle?: () => Promise<Buffer | undefined>;
}

/** One boot in progress: what the steps read and fill in, in order. */
export interface Boot {
  vm: VmRecord;
  image: ReadyImage;
  driver: VmmDriver;
  vp: VmPaths;
  signal?: AbortSignal;
  progress: (ev: ProgressEvent) => void;
  deadline: number;
  accel?: Accel;
  net?: { ipCidr: string; gateway: string; dns: string; tapName?: string };
  live?: LiveVm;
  hostPublicKey?: string;
  /** Sync the invoking user's identity (read from `home`, else the daemon's user's); undefined: `--no-sync`. */
  sync?: { home?: string };
  /** Resume this saved state instead of booting (a VM restored from a snapshot). */
  incoming?: SavedState;
  /**
   * Whether the VM gets the bulk port (where its driver has virtio-serial). A resumed state needs the device set
   * it was saved with: false for one saved without the port. Default true.
   */
  bulkPort?: boolean;
}

/** A named step of a boot; the names are the progress labels, in this order. */
export interface BootStep {
  name: string;
  run(boot: Boot, d: BootDeps): Promise<void>;
}

/** The guest's network as the seed tells it: user networking's fixed addresses, or the VM's tap. */
export const network: BootStep = {
  name: 'network',
  async run(b, d) {
    if (b.vm.networkMode === 'tap') {
      const t = await d.tap.attach(b.vm.id, { egress: b.vm.egress, mac: b.vm.mac }, b.signal);
      b.net = { ipCidr: t.guestCidr, gateway: t.gateway, dns: t.dns, tapName: t.tapName };
      const ip = t.guestCidr.split('/')[0]!;
      if (ip !== b.vm.hostAddress) b.vm = d.vms.update(b.vm.id, { hostAddress: ip, guestAddress: ip });
      await d.onTapAttached?.(t.gateway);
      return;
    }
    b.net = { ipCidr: USER_NET.cidr, gateway: USER_NET.gateway, dns: USER_NET.dns };
    // Something else may have taken the VM's SSH port while it was stopped.
    if (!(await isPortFree(b.vm.hostAddress, b.vm.sshPort)))
      b.vm = d.vms.update(b.vm.id, { sshPort: await pickFreePort(b.vm.hostAddress, d.vms.usedSshPorts()) });
  },
};

/** The seed disk (hostname, network, keys) and an empty console log; written again for a relaunch. */
export const writeSeed: BootStep = {
  name: 'write seed',
  async run(b, d) {
    const read = (path: string) =>
      readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
        throw new BangerError(ErrorCode.FailedPrecondition, `VM '${b.vm.name}' is missing ${path} and cannot boot`, {
          hint: `delete it with \`banger vm delete --force ${b.vm.name}\` and create it again`,
        });
      });
    const hostPrivateKey = await read(b.vp.hostKeyPrivate);
    b.hostPublicKey = (await read(b.vp.hostKeyPublic)).trim();
    const net = b.net!;
    const seed = await buildSeedTar({
      hostname: b.vm.name,
      ipCidr: net.ipCidr,
      gateway: net.gateway,
      dns: net.dns,
      hostPrivateKey,
      hostPublicKey: b.hostPublicKey,
      authorizedKeys: d.authorizedKey,
      agent: b.vm.agent ? await d.agentBundle?.() : undefined,
    });
    await writeFile(b.vp.seedDisk, seed, { mode: 0o600 });
    await writeFile(b.vp.consoleLog, '', { mode: 0o600 });
  },
};

/** Starts the VMM for `b` and records it: the launch step, and the relaunch of a guest that stalled. */
export async function launchVmm(b: Boot, d: BootDeps): Promise<void> {
  // A driver that boots only an ELF kernel (Firecracker) gets the vmlinux inside the image's bzImage.
  const kernelPath = b.driver.features.has('bzImage') ? b.image.kernelPath : await elfKernelFor(b.image.kernelPath, b.signal);
  const spec = launchSpec(b, d.kernelCmdline, kernelPath);
  // Each launch appends the VMM's command line to its log: bounded here, across any number of starts.
  await capLog(spec.vmmLogPath, VMM_LOG_MAX_BYTES);
  // The process is recorded the moment it exists, before the driver waits on it: a daemon killed
  // during the wait leaves a handle that the next start adopts or ends, never an unknown QEMU.
  const handle = await b.driver.launch(spec, b.signal, {
    onSpawned: (h) => writeHandles(b.vp.handles, h),
  });
  await writeHandles(b.vp.handles, handle);
  b.live = newLiveVm(handle, b.driver);
  d.live.add(b.vm.id, b.live);
  b.vm = d.vms.update(b.vm.id, { accel: b.accel!, startedAt: d.now().toISOString() });
}

/** Size past which a VM's vmm.log is rotated at its next launch (it keeps one rotated copy). */
export const VMM_LOG_MAX_BYTES = 256 * 1024;

/** How long a guest may print nothing at all before its VMM is started again (once). */
export const SILENT_CONSOLE_MS = 45_000;

/**
 * Waits for the guest's ready line and resolves with the rest of it. Under user networking the host side of
 * the forward accepts before the guest listens, and an SSH attempt then hangs: the guest's own line on the
 * console is the signal. A guest that prints nothing at all for `silentMs` has stalled before its kernel's
 * first line (seen now and then under software emulation: an early-boot hang that a fresh start of the same
 * VM does not repeat), and so has one whose console holds only kernel lines and nothing new for twice that
 * (the same hang just after the kernel's first line, seen in a CI run here: 180 s after `PCI: Fatal: No config
 * space access function found`), and so has one whose kernel reports a lockup or an RCU stall before the guest's
 * init printed anything (both vCPUs stuck at the crypto self-tests, in another CI run): its VMM is started again
 * once, with a notice; the boot deadline stays the same.
 * Failures carry the console's last lines.
 */
export async function waitForGuestReady(
  b: Pick<Boot, 'vm' | 'vp' | 'driver' | 'live' | 'deadline' | 'signal' | 'progress'>,
  opts: { silentMs: number; relaunch: (why: string) => Promise<void> },
): Promise<string> {
  let stall: string;
  const wait = (silentMs?: number) =>
    waitForConsoleLine(b.vp.consoleLog, READY_MARKER, {
      deadline: b.deadline,
      signal: b.signal,
      alive: () => b.driver.isAlive(b.live!.handle, b.vm.id),
      silentMs,
    });
  try {
    return await wait(opts.silentMs);
  } catch (e) {
    if (!(e instanceof EarlyBootStall)) throw await withConsoleTail(e, b.vp.consoleLog);
    b.progress({
      kind: 'notice',
      message: `${e.message} (an early-boot stall); starting its VMM again, once`,
    });
    stall = e.message;
  }
  await opts.relaunch(stall);
  return wait().catch(async (e: unknown) => {
    throw await withConsoleTail(e, b.vp.consoleLog);
  });
}

export const BOOT_STEPS: readonly BootStep[] = [
  {
    name: 'choose accelerator',
    async run(b, d) {
      const { accel, notice } = await d.accel.resolve(b.vm.accelChoice, b.image, b.signal);
      if (notice) b.progress({ kind: 'notice', message: notice });
      b.accel = accel;
    },
  },
  network,
  writeSeed,
  { name: 'launch', run: launchVmm },
  {
    name: 'wait for the guest',
    async run(b, d) {
      const rest = await waitForGuestReady(b, {
        silentMs: d.silentConsoleMs ?? SILENT_CONSOLE_MS,
        relaunch: async (why) => {
          d.log?.warn({ vm: b.vm.name, accel: b.accel, why }, 'early-boot stall: starting the VMM again');
          await d.live.teardown(b.vm.id);
          await writeSeed.run(b, d);
          await launchVmm(b, d);
        },
      });
      // The guest says whether its agent is up; only then (and only with a channel for it) is it used.
      if (rest.trimEnd() === READY_AGENT_SUFFIX && (b.driver.features.has('virtioSerial') || b.driver.features.has('vsock'))) {
        b.live!.hasAgent = true;
        await writeHandles(b.vp.handles, { ...b.live!.handle, agent: true });
      }
      await capConsoleLog(b.vp.consoleLog);
    },
  },
  {
    name: 'connect ssh',
    async run(b, d) {
      const live = b.live!;
      const session = await SshGuestSession.waitFor(d.live.sshTarget(b.vm, b.hostPublicKey!), {
        deadlineMs: Math.max(10_000, b.deadline - Date.now()),
        signal: b.signal,
        stillBooting: async () => d.live.get(b.vm.id) === live && (await b.driver.isAlive(live.handle, b.vm.id)),
      });
      d.live.useSession(live, session);
    },
  },
  {
    name: 'sync identity',
    async run(b, d) {
      const session = b.live?.session;
      if (!b.sync || !d.identity || !session) return;
      try {
        const info = await d.identity.sync(session, b.sync.home, b.signal);
        for (const w of info.warnings) b.progress({ kind: 'notice', message: `sync: ${w}` });
        b.vm = d.vms.update(b.vm.id, { synced: info });
      } catch (e) {
        // The VM is up and usable: a sync that fails is reported, and `banger vm sync` retries it.
        if (b.signal?.aborted) throw e;
        const why = e instanceof Error ? e.message : String(e);
        b.progress({ kind: 'notice', message: `identity sync failed: ${why} (retry with \`banger vm sync ${b.vm.name}\`)` });
      }
    },
  },
];

/** Runs the steps in order, reporting each as a progress step; the log gets each step's milliseconds. */
export async function runBoot(b: Boot, d: BootDeps, steps: readonly BootStep[] = BOOT_STEPS): Promise<void> {
  const ms: Record<string, number> = {};
  for (const [i, step] of steps.entries()) {
    b.signal?.throwIfAborted();
    const detail = step.name === 'launch' ? `${b.driver.name}, ${b.accel}` : undefined;
    b.progress({ kind: 'step', step: step.name, index: i + 1, total: steps.length, ...(detail ? { detail } : {}) });
    const t0 = performance.now();
    await step.run(b, d);
    ms[step.name] = Math.round(performance.now() - t0);
  }
  d.log?.info({ vm: b.vm.name, ms }, 'boot steps');
}

/** What the driver is asked to start: disks by the driver's features, never by its name. */
export function launchSpec(b: Boot, kernelCmdline: KernelCmdline, kernelPath = b.image.kernelPath): LaunchSpec {
  const { vm, vp, image, driver } = b;
  const qcow2 = driver.features.has('qcow2');
  const tapName = b.net?.tapName;
  const disks = activeDisks(vp);
  if (!b.accel) throw new BangerError(ErrorCode.Internal, 'launch before the accelerator was chosen');
  return {
    vmId: vm.id,
    name: vm.name,
    vcpus: vm.vcpus,
    memoryMib: vm.memoryMib,
    accel: b.accel,
    kernelPath,
    initrdPath: image.initrdPath,
    kernelCmdline: kernelCmdline(vm, b.accel),
    disks: [
      { id: 'root', path: qcow2 ? disks.root : vp.rootDiskRaw, format: qcow2 ? 'qcow2' : 'raw', readOnly: false },
      { id: 'work', path: disks.work, format: diskFormat(disks.work), readOnly: false },
      { id: 'seed', path: vp.seedDisk, format: 'raw', readOnly: true },
    ],
    network: tapName
      ? { mode: 'tap', tapName, mac: vm.mac }
      : { mode: 'user', hostAddress: vm.hostAddress, sshHostPort: vm.sshPort, egress: vm.egress, mac: vm.mac },
    consoleLogPath: vp.consoleLog,
    vmmLogPath: vp.vmmLog,
    controlSocketPath: driver.controlSocketPath(vp),
    // The guest agent's channel: a virtio-serial port where the driver has one, else its vsock device.
    channelSocketPath: driver.features.has('virtioSerial')
      ? vp.agentSocket
      : driver.features.has('vsock')
        ? vp.vsockSocket
        : undefined,
    ...(driver.features.has('virtioSerial') && b.bulkPort !== false ? { bulkSocketPath: vp.bulkSocket } : {}),
    workDir: vp.dir,
    ...(b.incoming !== undefined ? { incoming: b.incoming } : {}),
  };
}
