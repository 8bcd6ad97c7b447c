import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdir, readFile, rm, stat, writeFile, open } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import {
  BangerError,
  ErrorCode,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
} from '../../../errors/index.js';
import type { AccelChoice, ProgressEvent, VmInfo, VmmChoice } from '../../../protocol/types.js';
import type { VmCreateParams, VmPorts } from '../../../protocol/methods.js';
import type { Paths, VmPaths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import type { CommandRunner } from '../../exec.js';
import { shJoin, shq } from '../../guest/shell.js';
import { execInWorkspace } from '../workspace/guest-scripts.js';
import type { GuestExecOptions } from '../../guest/session.js';
import { SshGuestSession } from '../../guest/ssh.js';
import { generateEd25519 } from '../../guest/keys.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { Accel, DriverRegistry, LaunchSpec, VmHandle, VmmDriver, VmmName } from '../../vmm/driver.js';
import type { ImageService, ReadyImage } from '../image/service.js';
import { KeyedMutex } from '../locks.js';
import type { TapAttachment } from '../network/tap.js';
import { readHandles, removeRuntimeFiles, writeHandles } from './handles.js';
import { generateVmName, randomMac, validateVmName } from './names.js';
import { isPortFree, pickFreePort } from './ports.js';
import { buildSeedTar } from './seed.js';
import { parseSs, watchGuestPorts } from './guest-ports.js';
import { waitForConsoleLine } from './console.js';
import { POWEROFF_COMMAND, READY_MARKER } from '../../guest/init/contract.js';

/**
 * The guest command line for `vm exec`: in the VM's workspace (under `mise exec` when the guest has
 * mise) when it has one and no other directory is asked for; a login shell without argv.
 */
export function execCommand(vm: Pick<VmRecord, 'workspace'>, argv: readonly string[], cwd: string | undefined): string {
  if (cwd === undefined && vm.workspace) {
    if (argv.length === 0) return `cd ${shq(vm.workspace.guestPath)} && exec bash -l`;
    return execInWorkspace(vm.workspace.guestPath, argv);
  }
  const inner = argv.length === 0 ? 'exec bash -l' : `exec ${shJoin(argv)}`;
  return cwd ? `cd ${shq(cwd)} && ${inner}` : inner;
}

/** Decides the accelerator for a boot of `image`'s kernel: a real probe, cached. */
export interface AccelResolver {
  resolve(requested: AccelChoice, image: ReadyImage, signal?: AbortSignal): Promise<{ accel: Accel; notice?: string }>;
  /** Whether KVM is usable (cached answer or probe); used to pick a VMM. */
  kvmUsable(image: ReadyImage, signal?: AbortSignal): Promise<boolean>;
}

/** What the VM service needs of tap networking (see network/tap.ts). */
export interface TapNetworking {
  /** Whether tap mode can work on this host, and why not. */
  supported(signal?: AbortSignal): Promise<{ ok: boolean; reason?: string }>;
  /** Creates (or finds again) the VM's tap; the same VM keeps its address. */
  attach(vmId: string, opts: { egress: boolean; mac: string }, signal?: AbortSignal): Promise<TapAttachment>;
  detach(vmId: string, signal?: AbortSignal): Promise<void>;
  /** Removes what belongs to VMs not in `live`, recreates what live VMs miss. */
  reconcile(live: ReadonlySet<string>, signal?: AbortSignal): Promise<void>;
}

/** Builds the guest kernel command line for a boot. */
export type KernelCmdline = (vm: VmRecord) => string;

export interface VmServiceDeps {
  paths: Paths;
  vms: VmRepo;
  images: ImageService;
  drivers: DriverRegistry;
  accel: AccelResolver;
  kernelCmdline: KernelCmdline;
  run: CommandRunner;
  log: Logger;
  /** banger's client key pair, authorized in every guest. */
  clientKey: { privateKey: string; publicKey: string };
  now?: () => Date;
  /** Tap networking (bridge, taps, isolation rules). */
  tap: TapNetworking;
  /** Network mode of VMs created without --network (daemon config). */
  defaultNetwork: 'loopback' | 'tap';
  /** Told whenever the set of VMs or their addresses/ports change (host ssh config, DNS). */
  onVmsChanged?: () => void;
  /** Told the bridge address when a tap VM starts (banger's DNS listens there for guests). */
  onTapAttached?: (gateway: string) => Promise<void>;
  /** The daemon's uid: root forwards SSH on port 22 of each VM's address, others on a free high port. */
  uid: () => number;
  /** How long a boot may take until SSH answers. */
  bootTimeoutMs?: number;
}

/** What vm.create takes, minus the RPC plumbing. */
export type VmCreateOptions = Omit<VmCreateParams, 'progressToken' | 'start'>;

export interface VmExecStreams {
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
  pty?: GuestExecOptions['pty'];
  onStart?: GuestExecOptions['onStart'];
  signal?: AbortSignal;
}

type Progress = (ev: ProgressEvent) => void;

/** The guest address under QEMU user networking (slirp's defaults). */
const USER_NET = { ip: '10.0.2.15', cidr: '10.0.2.15/24', gateway: '10.0.2.2', dns: '10.0.2.3' } as const;
/** Loopback addresses of VMs: 127.77.0.1 is banger's DNS server; VMs get .0.2 upwards. */
const LOOPBACK_PREFIX = [127, 77];

/** The lowest free per-VM loopback address (all of 127/8 is local on Linux: no setup needed). */
export function allocateLoopbackAddress(used: ReadonlySet<string>): string {
  for (let n = 2; n < 65535; n++) {
    if (n % 256 === 0 || n % 256 === 255) continue;
    const addr = `${LOOPBACK_PREFIX.join('.')}.${n >> 8}.${n & 255}`;
    if (!used.has(addr)) return addr;
  }
  throw new BangerError(ErrorCode.ResourceExhausted, 'no free loopback address left for another VM', {
    hint: 'delete VMs you no longer need',
  });
}

export const VM_DEFAULTS = { cpus: 2, memoryMib: 1024, diskSizeMib: 4096, image: 'default' } as const;

/** What is true right now about a VM the daemon believes runs. */
interface LiveVm {
  handle: VmHandle;
  driver: VmmDriver;
  session?: SshGuestSession;
  connecting?: Promise<SshGuestSession>;
  /** Set while banger itself stops the VM, so its exit is not reported as unexpected. */
  stopping: boolean;
  /** Aborted when the daemon lets go of the VM: ends the exit watcher and the port watcher. */
  watch: AbortController;
  /** Guest ports forwarded on the VM's host address. */
  forwards: Set<number>;
}

/**
 * Owns VMs: their records, disks, VMM processes and SSH connections.
 *
 * Locking: `lifecycle` (one per VM id) serialises create/start/stop/delete of one VM; it is never held
 * across guest I/O such as exec or a workspace transfer. Different VMs proceed in parallel.
 */
export class VmService {
  private readonly live = new Map<string, LiveVm>();
  private readonly lifecycle = new KeyedMutex();
  /** Guards name uniqueness between concurrent creates. */
  private readonly createLock = new KeyedMutex();
  private readonly now: () => Date;

  constructor(private readonly d: VmServiceDeps) {
    this.now = d.now ?? (() => new Date());
  }

  // ---------- queries ----------

  list(): VmInfo[] {
    return this.d.vms.list().map((v) => this.info(v));
  }

  show(name: string): VmInfo {
    return this.info(this.get(name));
  }

  get(name: string): VmRecord {
    const vm = this.d.vms.byName(name);
    if (!vm) throw notFound(`no VM named '${name}'`, 'list VMs with `banger vm list`');
    return vm;
  }

  info(v: VmRecord): VmInfo {
    const live = this.live.get(v.id);
    let problem: string | null = null;
    if (v.state === 'running' && !live) problem = 'recorded as running but no VMM process is attached';
    if ((v.state === 'stopped' || v.state === 'created') && live) problem = 'recorded as stopped but its VMM process runs';
    const image = this.d.images.byId(v.imageId);
    return {
      id: v.id,
      name: v.name,
      image: image?.name ?? v.imageId,
      state: v.state,
      vcpus: v.vcpus,
      memoryMib: v.memoryMib,
      diskSizeMib: v.diskSizeMib,
      vmm: v.vmm,
      accel: v.accel,
      network: {
        mode: v.networkMode,
        hostAddress: v.hostAddress,
        sshPort: v.sshPort,
        guestAddress: v.guestAddress,
        egress: v.egress,
        forwardedPorts: live ? [...live.forwards].sort((a, b) => a - b) : [],
      },
      dnsName: `${v.name}.vm`,
      pid: live?.handle.pid ?? null,
      lastError: v.lastError,
      problem,
      createdAt: v.createdAt,
      startedAt: v.startedAt,
      dir: v.dir,
      workspace: v.workspace,
    };
  }

  async consoleLog(name: string, tailBytes = 64 * 1024): Promise<string> {
    const vm = this.get(name);
    const p = this.d.paths.vm(vm.id).consoleLog;
    try {
      const st = await stat(p);
      const fh = await open(p, 'r');
      try {
        const len = Math.min(st.size, tailBytes);
        const buf = Buffer.alloc(len);
        await fh.read(buf, 0, len, st.size - len);
        return buf.toString('utf8');
      } finally {
        await fh.close();
      }
    } catch {
      return '';
    }
  }

  sshTarget(name: string) {
    const vm = this.requireRunning(name);
    return {
      host: vm.hostAddress,
      port: vm.sshPort,
      user: 'root',
      identityFile: this.d.paths.sshPrivateKey,
      knownHostsFile: this.d.paths.vm(vm.id).knownHosts,
      hostKeyAlias: `${vm.name}.vm`,
    };
  }

  // ---------- lifecycle ----------

  async create(opts: VmCreateOptions, progress: Progress, signal?: AbortSignal): Promise<VmInfo> {
    if (opts.name !== undefined) validateVmName(opts.name);
    const cpus = opts.cpus ?? VM_DEFAULTS.cpus;
    const memoryMib = opts.memoryMib ?? VM_DEFAULTS.memoryMib;
    const diskSizeMib = opts.diskSizeMib ?? VM_DEFAULTS.diskSizeMib;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) throw invalidArgument(`--cpus must be 1..64, got ${cpus}`);
    if (!Number.isInteger(memoryMib) || memoryMib < 128)
      throw invalidArgument(`--memory must be at least 128 MiB, got ${memoryMib}`);
    if (!Number.isInteger(diskSizeMib) || diskSizeMib < 64)
      throw invalidArgument(`--disk-size must be at least 64 MiB, got ${diskSizeMib}`);

    const networkMode = opts.network ?? this.d.defaultNetwork;
    if (networkMode === 'tap') {
      const sup = await this.d.tap.supported(signal);
      if (!sup.ok) throw failedPrecondition(`tap networking is not available here: ${sup.reason}`, 'use --network loopback');
    }
    const image = await this.d.images.ensureReady(opts.image ?? VM_DEFAULTS.image, progress, signal);
    const vmmName = await this.chooseVmm(opts.vmm ?? 'auto', image, signal);
    const driver = this.driver(vmmName);

    const record = await this.createLock.run('names', async () => {
      const name = opts.name ?? generateVmName((n) => this.d.vms.byName(n) !== undefined);
      if (this.d.vms.byName(name))
        throw alreadyExists(`a VM named '${name}' already exists`, `pick another --name, or \`banger vm delete ${name}\``);
      const id = randomBytes(6).toString('hex');
      const now = this.now().toISOString();
      const mac = randomMac();
      let hostAddress: string;
      let guestAddress: string = USER_NET.ip;
      if (networkMode === 'tap') {
        // The tap and the guest's address exist from create on: the address is the VM's, like a name.
        const t = await this.d.tap.attach(id, { egress: opts.egress ?? false, mac }, signal);
        hostAddress = guestAddress = t.guestCidr.split('/')[0]!;
      } else {
        // Skip addresses whose SSH port something else holds (e.g. a VM of another BANGER_HOME).
        const used = new Set(this.d.vms.list().map((v) => v.hostAddress));
        hostAddress = allocateLoopbackAddress(used);
        while (this.d.uid() === 0 && !(await isPortFree(hostAddress, 22))) {
          used.add(hostAddress);
          hostAddress = allocateLoopbackAddress(used);
        }
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
        accelChoice: opts.accel ?? 'auto',
        accel: null,
        networkMode,
        hostAddress,
        sshPort:
          networkMode === 'tap' || this.d.uid() === 0 ? 22 : await pickFreePort(hostAddress, this.d.vms.usedSshPorts()),
        guestAddress,
        egress: opts.egress ?? false,
        mac,
        dir: this.d.paths.vmDir(id),
        lastError: null,
        createdAt: now,
        startedAt: null,
        updatedAt: now,
        workspace: null,
      };
      this.d.vms.insert(rec);
      return rec;
    });

    return this.lifecycle.run(record.id, async () => {
      const vp = this.d.paths.vm(record.id);
      try {
        const total = 3;
        progress({ kind: 'step', step: 'create root disk', index: 1, total });
        await mkdir(vp.dir, { recursive: true, mode: 0o700 });
        const rootfs = image.rootfsPath;
        if (driver.features.has('qcow2')) {
          // Copy-on-write overlay: creating it never copies the image.
          await this.d.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', rootfs, '-F', 'raw', vp.rootDisk], { signal });
        } else {
          await this.d.run('cp', ['--sparse=always', '--reflink=auto', rootfs, vp.rootDiskRaw], { signal });
        }
        progress({ kind: 'step', step: 'create work disk', index: 2, total });
        await this.d.run('truncate', ['-s', `${diskSizeMib}M`, vp.workDisk], { signal });
        await this.d.run('mkfs.ext4', ['-q', '-F', '-L', 'work', '-E', 'root_owner=0:0', vp.workDisk], { signal });
        progress({ kind: 'step', step: 'generate host key', index: 3, total });
        const hostKey = generateEd25519(`${record.name}.vm`);
        await writeFile(vp.hostKeyPrivate, hostKey.privateKey, { mode: 0o600 });
        await writeFile(vp.hostKeyPublic, hostKey.publicKey + '\n', { mode: 0o644 });
        await writeFile(vp.knownHosts, `${record.name}.vm ${hostKey.publicKey}\n`, { mode: 0o644 });
        this.d.log.info({ vm: record.name, id: record.id, image: image.name, vmm: vmmName }, 'vm created');
        this.d.onVmsChanged?.();
        return this.info(this.d.vms.byId(record.id)!);
      } catch (e) {
        // Nothing half-made stays behind: a failed create leaves no record and no files.
        await rm(vp.dir, { recursive: true, force: true });
        if (record.networkMode === 'tap') await this.d.tap.detach(record.id).catch(() => undefined);
        this.d.vms.delete(record.id);
        throw e;
      }
    }, signal);
  }

  async start(name: string, progress: Progress, signal?: AbortSignal): Promise<VmInfo> {
    const vm0 = this.get(name);
    return this.lifecycle.run(vm0.id, () => this.startLocked(vm0.id, progress, signal), signal);
  }

  private async startLocked(id: string, progress: Progress, signal?: AbortSignal): Promise<VmInfo> {
    let vm = this.d.vms.byId(id)!;
    if (vm.state === 'running' && this.live.has(id)) return this.info(vm);
    const image = this.d.images.byIdReady(vm.imageId);
    const driver = this.driver(vm.vmm);
    const vp = this.d.paths.vm(id);
    const total = 4;
    vm = this.d.vms.update(id, { state: 'starting', lastError: null });
    try {
      progress({ kind: 'step', step: 'choose accelerator', index: 1, total });
      const { accel, notice } = await this.d.accel.resolve(vm.accelChoice, image, signal);
      if (notice) progress({ kind: 'notice', message: notice });

      progress({ kind: 'step', step: 'write seed', index: 2, total });
      let net: { ipCidr: string; gateway: string; dns: string; tapName?: string } = {
        ipCidr: USER_NET.cidr,
        gateway: USER_NET.gateway,
        dns: USER_NET.dns,
      };
      if (vm.networkMode === 'tap') {
        const t = await this.d.tap.attach(id, { egress: vm.egress, mac: vm.mac }, signal);
        net = { ipCidr: t.guestCidr, gateway: t.gateway, dns: t.dns, tapName: t.tapName };
        const ip = t.guestCidr.split('/')[0]!;
        if (ip !== vm.hostAddress) vm = this.d.vms.update(id, { hostAddress: ip, guestAddress: ip });
        await this.d.onTapAttached?.(t.gateway);
      } else if (!(await isPortFree(vm.hostAddress, vm.sshPort))) {
        vm = this.d.vms.update(id, { sshPort: await pickFreePort(vm.hostAddress, this.d.vms.usedSshPorts()) });
      }
      const hostPrivateKey = await readFile(vp.hostKeyPrivate, 'utf8');
      const hostPublicKey = (await readFile(vp.hostKeyPublic, 'utf8')).trim();
      await writeFile(
        vp.seedDisk,
        await buildSeedTar({
          hostname: vm.name,
          ipCidr: net.ipCidr,
          gateway: net.gateway,
          dns: net.dns,
          hostPrivateKey,
          hostPublicKey,
          authorizedKeys: this.d.clientKey.publicKey,
        }),
        { mode: 0o600 },
      );
      await writeFile(vp.consoleLog, '', { mode: 0o600 });

      progress({ kind: 'step', step: `boot (${vm.vmm}, ${accel})`, index: 3, total });
      const spec = this.launchSpec(vm, image, accel, vp, net.tapName);
      const handle = await driver.launch(spec, signal);
      await writeHandles(vp.handles, handle);
      const live: LiveVm = { handle, driver, stopping: false, watch: new AbortController(), forwards: new Set() };
      this.live.set(id, live);
      this.watchExit(id, live);
      vm = this.d.vms.update(id, { accel, startedAt: this.now().toISOString() });

      progress({ kind: 'step', step: 'wait for ssh', index: 4, total });
      const bootDeadline = Date.now() + (this.d.bootTimeoutMs ?? 180_000);
      // Under user networking the host side of the forward accepts before the guest listens, and an SSH
      // attempt then hangs: wait for the guest's own "ready" line on the console first.
      await waitForConsoleLine(vp.consoleLog, READY_MARKER, {
        deadline: bootDeadline,
        signal,
        alive: () => driver.isAlive(handle, id),
      });
      live.session = await SshGuestSession.waitFor(this.sshTargetOf(vm, hostPublicKey), {
        deadlineMs: Math.max(10_000, bootDeadline - Date.now()),
        signal,
        stillBooting: async () => this.live.get(id) === live && (await driver.isAlive(handle, id)),
      });
      live.session.onClose(() => {
        if (this.live.get(id) === live) live.session = undefined;
      });
      vm = this.d.vms.update(id, { state: 'running' });
      this.forwardGuestPorts(vm, live);
      this.d.log.info({ vm: vm.name, pid: handle.pid, accel }, 'vm running');
      this.d.onVmsChanged?.();
      return this.info(vm);
    } catch (e) {
      await this.teardown(id);
      const err = e instanceof BangerError ? e : new BangerError(ErrorCode.Internal, (e as Error).message, { cause: e });
      if (err.code === ErrorCode.Cancelled) this.d.vms.update(id, { state: 'stopped', lastError: 'start cancelled' });
      else this.d.vms.update(id, { state: 'error', lastError: err.message });
      throw err;
    }
  }

  async stop(name: string, opts: { force?: boolean; timeoutSeconds?: number } = {}, signal?: AbortSignal): Promise<VmInfo> {
    const vm0 = this.get(name);
    return this.lifecycle.run(vm0.id, () => this.stopLocked(vm0.id, opts, signal), signal);
  }

  private async stopLocked(id: string, opts: { force?: boolean; timeoutSeconds?: number }, signal?: AbortSignal) {
    const vm = this.d.vms.byId(id)!;
    const live = this.live.get(id);
    if (!live) {
      if (vm.state !== 'created') this.d.vms.update(id, { state: 'stopped' });
      return this.info(this.d.vms.byId(id)!);
    }
    live.stopping = true;
    this.d.vms.update(id, { state: 'stopping' });
    const timeoutMs = (opts.timeoutSeconds ?? 20) * 1000;
    if (!opts.force) {
      const exited = await this.gracefulShutdown(vm, live, timeoutMs, signal);
      if (!exited) this.d.log.warn({ vm: vm.name }, 'graceful shutdown timed out; forcing');
    }
    await this.teardown(id);
    this.d.vms.update(id, { state: 'stopped' });
    this.d.log.info({ vm: vm.name }, 'vm stopped');
    return this.info(this.d.vms.byId(id)!);
  }

  /** Asks the guest to power off (over SSH, else through the VMM) and waits for the VMM to exit. */
  private async gracefulShutdown(vm: VmRecord, live: LiveVm, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    // After a daemon restart there is no connection yet: make one, briefly, to ask the guest.
    const session = await this.session(vm, AbortSignal.timeout(Math.min(timeoutMs, 10_000))).catch(() => undefined);
    let asked = false;
    if (session && !session.isClosed) {
      try {
        await session.exec(POWEROFF_COMMAND, { signal: AbortSignal.timeout(5000) });
        asked = true;
      } catch {
        /* the guest may drop the connection as it goes down */
        asked = true;
      }
    }
    if (!asked && live.driver.requestShutdown) {
      await live.driver.requestShutdown(live.handle, signal).catch(() => undefined);
    }
    const timer = AbortSignal.timeout(timeoutMs);
    const both = signal ? AbortSignal.any([signal, timer]) : timer;
    try {
      await live.driver.waitExit(live.handle, both);
      return true;
    } catch {
      return false;
    }
  }

  async restart(name: string, progress: Progress, signal?: AbortSignal): Promise<VmInfo> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, async () => {
      await this.stopLocked(vm.id, {}, signal);
      return this.startLocked(vm.id, progress, signal);
    }, signal);
  }

  async delete(name: string, opts: { force?: boolean } = {}, signal?: AbortSignal): Promise<{ deleted: string }> {
    const vm0 = this.get(name);
    return this.lifecycle.run(vm0.id, async () => {
      const vm = this.d.vms.byId(vm0.id);
      if (!vm) return { deleted: name };
      if (this.live.has(vm.id)) {
        if (!opts.force)
          throw failedPrecondition(`VM '${name}' is running`, `stop it first (\`banger vm stop ${name}\`) or use --force`);
        await this.stopLocked(vm.id, { force: true }, signal);
      }
      if (vm.networkMode === 'tap') await this.d.tap.detach(vm.id, signal);
      await rm(vm.dir, { recursive: true, force: true });
      this.d.vms.delete(vm.id);
      this.d.log.info({ vm: name }, 'vm deleted');
      this.d.onVmsChanged?.();
      return { deleted: name };
    }, signal);
  }

  // ---------- guest access ----------

  /** Runs a command in a running VM, streaming its output. Holds no lifecycle lock while it runs. */
  async exec(name: string, argv: string[], cwd: string | undefined, io: VmExecStreams): Promise<number> {
    const vm = this.requireRunning(name);
    const session = await this.session(vm, io.signal);
    const command = execCommand(vm, argv, cwd);
    const r = await session.exec(command, {
      stdin: io.stdin,
      stdout: io.stdout,
      stderr: io.stderr,
      pty: io.pty,
      onStart: io.onStart,
      signal: io.signal,
    });
    return r.code;
  }

  /** The open SSH session of a running VM, connecting once if the daemon has none (after a restart). */
  async session(vm: VmRecord, signal?: AbortSignal): Promise<SshGuestSession> {
    const live = this.live.get(vm.id);
    if (!live) throw failedPrecondition(`VM '${vm.name}' is not running`, `start it with \`banger vm start ${vm.name}\``);
    if (live.session && !live.session.isClosed) return live.session;
    if (!live.connecting) {
      const hostPublicKey = (await readFile(this.d.paths.vm(vm.id).hostKeyPublic, 'utf8')).trim();
      live.connecting = SshGuestSession.waitFor(this.sshTargetOf(vm, hostPublicKey), {
        deadlineMs: 30_000,
        signal,
        stillBooting: () => live.driver.isAlive(live.handle, vm.id),
      }).finally(() => (live.connecting = undefined));
    }
    const s = await live.connecting;
    live.session = s;
    s.onClose(() => {
      if (live.session === s) live.session = undefined;
    });
    return s;
  }

  /**
   * The VM record of a running VM, checked under its lifecycle lock (so no start/stop is half done),
   * which is released before the caller does guest I/O.
   */
  async runningUnderLock(name: string, signal?: AbortSignal): Promise<VmRecord> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, async () => this.requireRunning(name), signal);
  }

  private requireRunning(name: string): VmRecord {
    const vm = this.get(name);
    if (vm.state !== 'running' || !this.live.has(vm.id))
      throw failedPrecondition(
        `VM '${name}' is ${vm.state === 'running' ? 'not reachable' : vm.state}`,
        `start it with \`banger vm start ${name}\``,
      );
    return vm;
  }

  /** The guest's listening TCP ports, with their processes and whether the host can reach them. */
  async ports(name: string, signal?: AbortSignal): Promise<VmPorts> {
    const vm = this.requireRunning(name);
    const live = this.live.get(vm.id)!;
    const session = await this.session(vm, signal);
    const r = await session.exec('ss -H -ltnp', { signal });
    if (r.code !== 0) throw new BangerError(ErrorCode.Internal, `ss failed in the guest: ${r.stderr.toString().trim()}`);
    const seen = new Set<string>();
    const ports = parseSs(r.stdout.toString())
      .filter((l) => {
        const key = `${l.address}:${l.port}`;
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      })
      .map((l) => {
        const forwarded = l.port === 22 || live.forwards.has(l.port);
        return {
          port: l.port,
          address: l.address,
          process: l.process,
          forwarded,
          url: forwarded ? (l.port === 22 ? `ssh://root@${vm.name}.vm` : `http://${vm.name}.vm:${l.port}/`) : null,
        };
      })
      .sort((a, b) => a.port - b.port);
    return { name: vm.name, dnsName: `${vm.name}.vm`, hostAddress: vm.hostAddress, ports };
  }

  // ---------- reconcile ----------

  /**
   * Makes records agree with reality after a daemon (re)start: VMs whose VMM process still runs are
   * adopted; the rest are marked stopped and their runtime files removed.
   */
  async reconcile(): Promise<void> {
    for (const vm of this.d.vms.list()) {
      const vp = this.d.paths.vm(vm.id);
      const handle = await readHandles(vp.handles);
      const driver = this.d.drivers.get(vm.vmm);
      if (handle && driver && (await driver.isAlive(handle, vm.id))) {
        const live: LiveVm = {
          handle,
          driver,
          stopping: false,
          watch: new AbortController(),
          forwards: new Set(handle.forwards ?? []),
        };
        this.live.set(vm.id, live);
        this.watchExit(vm.id, live);
        if (vm.state !== 'running') this.d.vms.update(vm.id, { state: 'running' });
        this.forwardGuestPorts(vm, live);
        this.d.log.info({ vm: vm.name, pid: handle.pid }, 'adopted running vm');
        continue;
      }
      await removeRuntimeFiles(this.runtimeFiles(vp));
      if (vm.state === 'running' || vm.state === 'starting' || vm.state === 'stopping') {
        this.d.vms.update(vm.id, {
          state: 'stopped',
          lastError: vm.state === 'running' ? 'its VMM process ended while bangerd was not running' : vm.lastError,
        });
        this.d.log.info({ vm: vm.name }, 'vm marked stopped: no live process');
      }
    }
    const tapVms = this.d.vms.list().filter((v) => v.networkMode === 'tap');
    if (tapVms.length > 0) {
      await this.d.tap
        // Stopped VMs keep their tap and address; only what deleted VMs left behind goes.
        .reconcile(new Set(tapVms.map((v) => v.id)))
        .catch((e: unknown) => this.d.log.warn({ err: (e as Error).message }, 'tap network reconcile failed'));
    }
  }

  /** Closes connections and watchers; VMs keep running (they outlive the daemon). */
  detachAll(): void {
    for (const live of this.live.values()) {
      live.watch.abort();
      live.session?.close();
    }
    this.live.clear();
  }

  /** Names of running VMs in tap mode (network down refuses while there are any). */
  runningTapVms(): string[] {
    return this.d.vms.list().filter((v) => v.networkMode === 'tap' && this.live.has(v.id)).map((v) => v.name);
  }

  runningCount(): number {
    return this.live.size;
  }

  // ---------- internals ----------

  /**
   * Keeps one forward per listening guest port on the VM's own host address while the VM runs (loopback
   * networking), so `NAME.vm:PORT` reaches a server started in the guest. Runs in the background until the
   * daemon lets go of the VM; the current set is kept in handles.json for a restarted daemon.
   */
  private forwardGuestPorts(vm: VmRecord, live: LiveVm): void {
    const pf = live.driver.portForwarding;
    if (vm.networkMode !== 'loopback' || !pf) return;
    const signal = live.watch.signal;
    const handlesPath = this.d.paths.vm(vm.id).handles;
    const fwd = (port: number) => ({ hostAddress: vm.hostAddress, hostPort: port, guestPort: port });
    let applying = Promise.resolve();
    const apply = (wanted: Set<number>) => {
      applying = applying
        .then(async () => {
          for (const port of [...live.forwards].filter((p) => !wanted.has(p))) {
            await pf.removeForward(live.handle, fwd(port), signal).catch(() => undefined);
            live.forwards.delete(port);
          }
          for (const port of [...wanted].filter((p) => !live.forwards.has(p))) {
            try {
              await pf.addForward(live.handle, fwd(port), signal);
              live.forwards.add(port);
            } catch (e) {
              this.d.log.warn({ vm: vm.name, port, err: (e as Error).message }, 'could not forward guest port');
            }
          }
          if (!signal.aborted)
            await writeHandles(handlesPath, { ...live.handle, forwards: [...live.forwards].sort((a, b) => a - b) });
          this.d.log.info({ vm: vm.name, ports: [...live.forwards] }, 'guest port forwards');
        })
        .catch(() => undefined);
    };
    void (async () => {
      while (!signal.aborted) {
        try {
          const session = await this.session(vm, signal);
          await watchGuestPorts(session, vm.guestAddress, apply, signal);
        } catch {
          /* not reachable right now: try again below */
        }
        await sleep(2000, undefined, { signal }).catch(() => undefined);
      }
    })();
  }

  private watchExit(id: string, live: LiveVm): void {
    live.driver.waitExit(live.handle, live.watch.signal).then(
      async () => {
        if (this.live.get(id) !== live || live.stopping) return;
        // The guest powered itself off or the VMM died: record it, clean up.
        this.live.delete(id);
        live.session?.close();
        await removeRuntimeFiles(this.runtimeFiles(this.d.paths.vm(id)));
        const vm = this.d.vms.byId(id);
        if (vm && vm.state !== 'starting') {
          this.d.vms.update(id, { state: 'stopped', lastError: 'the VM stopped on its own (guest poweroff or VMM exit)' });
        }
        this.d.log.warn({ vm: vm?.name }, 'vm process exited');
      },
      () => undefined,
    );
  }

  /** Ends the VMM (if any), closes the session and removes runtime files. */
  private async teardown(id: string): Promise<void> {
    const live = this.live.get(id);
    if (live) {
      live.stopping = true;
      live.watch.abort();
      live.session?.close();
      await live.driver.kill(live.handle, 3000).catch(() => undefined);
      this.live.delete(id);
    }
    await removeRuntimeFiles(this.runtimeFiles(this.d.paths.vm(id)));
  }

  private runtimeFiles(vp: VmPaths): string[] {
    return [vp.handles, vp.qmpSocket, vp.apiSocket, vp.vsockSocket, vp.pidFile, vp.seedDisk];
  }

  private launchSpec(vm: VmRecord, image: ReadyImage, accel: Accel, vp: VmPaths, tapName?: string): LaunchSpec {
    const qcow2 = vm.vmm === 'qemu';
    return {
      vmId: vm.id,
      name: vm.name,
      vcpus: vm.vcpus,
      memoryMib: vm.memoryMib,
      accel,
      kernelPath: image.kernelPath,
      initrdPath: image.initrdPath,
      kernelCmdline: this.d.kernelCmdline(vm),
      disks: [
        { id: 'root', path: qcow2 ? vp.rootDisk : vp.rootDiskRaw, format: qcow2 ? 'qcow2' : 'raw', readOnly: false },
        { id: 'work', path: vp.workDisk, format: 'raw', readOnly: false },
        { id: 'seed', path: vp.seedDisk, format: 'raw', readOnly: true },
      ],
      network: tapName
        ? { mode: 'tap', tapName, mac: vm.mac }
        : { mode: 'user', hostAddress: vm.hostAddress, sshHostPort: vm.sshPort, egress: vm.egress, mac: vm.mac },
      consoleLogPath: vp.consoleLog,
      vmmLogPath: vp.vmmLog,
      controlSocketPath: vm.vmm === 'qemu' ? vp.qmpSocket : vp.apiSocket,
    };
  }

  private sshTargetOf(vm: VmRecord, hostPublicKey: string) {
    return {
      host: vm.hostAddress,
      port: vm.sshPort,
      username: 'root',
      privateKey: this.d.clientKey.privateKey,
      hostPublicKey,
    };
  }

  private driver(name: VmmName): VmmDriver {
    const d = this.d.drivers.get(name);
    if (!d) throw failedPrecondition(`the ${name} driver is not available in this daemon`);
    return d;
  }

  private async chooseVmm(choice: VmmChoice, image: ReadyImage, signal?: AbortSignal): Promise<VmmName> {
    if (choice === 'qemu' || choice === 'firecracker') {
      const d = this.driver(choice);
      const a = await d.availability(signal);
      if (!a.ok) throw failedPrecondition(`${choice} cannot run here: ${a.reason}`, 'run `banger doctor`');
      if (choice === 'firecracker') {
        throw failedPrecondition(
          'Firecracker VMs need tap networking, which this version of banger does not set up yet',
          'use --vmm qemu',
        );
      }
      return choice;
    }
    // auto: Firecracker only where it can run (binary + usable KVM) and its networking exists; else QEMU.
    const fc = this.d.drivers.get('firecracker');
    if (fc && (await fc.availability(signal)).ok && (await this.d.accel.kvmUsable(image, signal)) && fc.features.has('userNetworking'))
      return 'firecracker';
    return 'qemu';
  }
}

