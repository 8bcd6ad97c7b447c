import { BangerError, ErrorCode, failedPrecondition, notFound, toBangerError } from '../../../errors/index.js';
import type { NetworkMode, ProgressEvent } from '../../../protocol/common.js';
import type { VmInfo } from '../../../protocol/vm.js';
import type { Paths, VmPaths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { DriverRegistry, VmHandle, VmmDriver } from '../../vmm/driver.js';
import { restoreSteps } from '../snapshot/restore.js';
import { VM_RESTORE_FILE, readJson, type RestoreMarker } from '../snapshot/store.js';
import { join } from 'node:path';
import type { ImageService } from '../image/service.js';
import { KeyedMutex } from '../locks.js';
import { runBoot, type AccelResolver, type KernelCmdline, type TapNetworking } from './boot.js';
import { keepConsoleLogCapped, readConsoleTail } from './console.js';
import { sshTargetOf, vmInfo } from './info.js';
import { VmGuestAccess } from './guest-access.js';
import { VmPoolHooks } from './pool-hooks.js';
import { removeVmFiles } from './files.js';
import { SPACE_NEEDED, asNoSpace, ensureFreeSpace } from './disks.js';
import { applyVmSettings, type VmSettingsChange } from './settings.js';
import { LiveVms } from './live.js';
import { insertVmRecord, makeNewVmFiles, planCreate, undoCreate, type VmCreateOptions } from './create.js';
import { requireDriver } from './vmm-choice.js';
import { notRunningError } from './not-running.js';
import { reconcileVms, type HostProcess } from './reconcile.js';
import type { IdentitySync } from '../sync/service.js';

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
  defaultNetwork: NetworkMode;
  /** Told whenever the set of VMs or their addresses/ports change (host ssh config, DNS). */
  onVmsChanged?: () => void;
  /** After a VM was deleted (a fork's snapshot it was layered on may be unused now). */
  onVmDeleted?: () => void;
  /** Told the bridge address when a tap VM starts (banger's DNS listens there for guests). */
  onTapAttached?: (gateway: string) => Promise<void>;
  /** The daemon's uid: root forwards SSH on port 22 of each VM's address, others on a free high port. */
  uid: () => number;
  /** How long a boot may take until SSH answers. */
  bootTimeoutMs?: number;
  /** A guest silent on its console this long is started again once (boot.ts SILENT_CONSOLE_MS by default). */
  silentConsoleMs?: number;
  /** The guest agent bundle every start puts in the seed (see BootDeps.agentBundle). */
  agentBundle?: () => Promise<Buffer | undefined>;
  /** The host's processes, for reconcile (injected for tests). */
  processes?: () => Promise<HostProcess[]>;
  /** How often a running VM's console log is checked against its cap. */
  consoleCapIntervalMs?: number;
  /** Puts the invoking user's identity into a guest at start and on `vm sync`; omitted: no sync. */
  identity?: IdentitySync;
}

/** Per start: whether to sync the invoking user's identity, and whose (their home directory). */
export interface StartOptions {
  sync?: boolean;
  home?: string;
}

/** A running VM as the snapshot service sees it, under its lifecycle lock. */
export interface RunningVm {
  vm: VmRecord;
  vp: VmPaths;
  handle: VmHandle;
  driver: VmmDriver;
  hasAgent: boolean;
}

type Progress = (ev: ProgressEvent) => void;

/**
 * Owns VMs: their records, disks and lifecycle. Live processes and connections are in `LiveVms`, boot is
 * the list of steps in boot.ts, guest access (exec, agent, ports and their forwards) in guest-access.ts,
 * the warm pool's hooks (park, resume, hand-over) in pool-hooks.ts, restart recovery in reconcile.ts.
 *
 * Locking: `lifecycle` (one per VM id) serialises create/start/stop/delete of one VM; it is never held
 * across guest I/O such as exec or a workspace transfer. Different VMs proceed in parallel.
 */
export class VmService {
  private readonly live: LiveVms;
  /** Guest access of running VMs: exec, agent, stats, the guest session, ports (guest-access.ts). */
  readonly guest: VmGuestAccess;
  /** What the warm pool does to its VMs under `withRunning`: park, resume, agent, hand-over (pool-hooks.ts). */
  readonly pool: VmPoolHooks;
  private readonly lifecycle = new KeyedMutex();
  /** Guards name uniqueness between concurrent creates. */
  private readonly createLock = new KeyedMutex();
  private readonly now: () => Date;

  constructor(private readonly d: VmServiceDeps) {
    this.now = d.now ?? (() => new Date());
    this.live = new LiveVms({
      paths: d.paths,
      log: d.log,
      clientKey: d.clientKey,
      onUnexpectedExit: (id) => this.onUnexpectedExit(id),
    });
    this.guest = new VmGuestAccess({
      paths: d.paths,
      live: this.live,
      log: d.log,
      uid: d.uid,
      running: (name) => this.requireRunning(this.get(name)),
      runningUnderLock: (name, signal) => this.runningUnderLock(name, signal),
      vms: d.vms,
      identity: d.identity,
    });
    this.pool = new VmPoolHooks({ live: this.live, vms: d.vms });
  }

  // ---------- queries ----------

  /** The user's VMs: a warm pool's parked VMs are not among them (`banger pool status` counts those). */
  list(): VmInfo[] {
    return this.d.vms
      .list()
      .filter((v) => v.pool === null)
      .map((v) => this.info(v));
  }

  show(name: string): VmInfo {
    return this.info(this.get(name));
  }

  /** Whether any VM, a warm pool's included, is called `name`. */
  nameTaken(name: string): boolean {
    return this.d.vms.byName(name) !== undefined;
  }

  /** The record of the VM called `name`: the one lookup by name a request makes. */
  get(name: string): VmRecord {
    const vm = this.d.vms.byName(name);
    if (!vm) throw notFound(`no VM named '${name}'`, 'list VMs with `banger vm list`');
    return vm;
  }

  info(v: VmRecord): VmInfo {
    return vmInfo(v, {
      live: this.live.get(v.id),
      imageName: this.d.images.byId(v.imageId)?.name,
      channel: this.live.channel(v.id),
      vp: this.d.paths.vm(v.id),
      qcow2: this.d.drivers.get(v.vmm)?.features.has('qcow2') ?? true,
    });
  }

  async consoleLog(name: string, tailBytes = 64 * 1024): Promise<string> {
    const vm = this.get(name);
    return readConsoleTail(this.d.paths.vm(vm.id).consoleLog, tailBytes);
  }

  sshTarget(name: string) {
    return sshTargetOf(this.requireRunning(this.get(name)), this.d.paths);
  }

  // ---------- lifecycle ----------

  async create(opts: VmCreateOptions, progress: Progress, signal?: AbortSignal): Promise<VmInfo> {
    const plan = await planCreate(opts, this.d, progress, signal);
    const record = await this.createLock.run('names', () =>
      insertVmRecord(plan, { vms: this.d.vms, tap: this.d.tap, paths: this.d.paths, uid: this.d.uid, now: () => this.now() }, signal),
    );
    return this.lifecycle.run(record.id, async () => {
      try {
        await makeNewVmFiles(record, plan, this.d, progress, signal);
        this.d.log.info({ vm: record.name, id: record.id, image: plan.image.name, vmm: plan.vmmName }, 'vm created');
        this.d.onVmsChanged?.();
        return this.info(this.d.vms.byId(record.id)!);
      } catch (e) {
        // Nothing half-made stays behind: a failed create leaves no record and no files.
        await undoCreate(record, this.d);
        throw e;
      }
    }, signal);
  }

  async start(name: string, progress: Progress, signal?: AbortSignal, opts: StartOptions = {}): Promise<VmInfo> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, () => this.startLocked(vm.id, progress, signal, opts), signal);
  }

  private async startLocked(id: string, progress: Progress, signal?: AbortSignal, opts: StartOptions = {}): Promise<VmInfo> {
    let vm = this.d.vms.byId(id)!;
    if (vm.state === 'running' && this.live.has(id)) return this.info(vm);
    const image = this.d.images.byIdReady(vm.imageId);
    const driver = requireDriver(this.d.drivers, vm.vmm);
    // A full host disk is said before anything changes: the VM stays as it was.
    await ensureFreeSpace(vm.dir, SPACE_NEEDED.start, `start VM '${vm.name}'`);
    // A VM made from a snapshot resumes the saved state at its first start instead of booting.
    const restore = await readJson<RestoreMarker>(join(this.d.paths.vm(id).dir, VM_RESTORE_FILE));
    vm = this.d.vms.update(id, { state: 'starting', lastError: null });
    const boot = {
      vm,
      image,
      driver,
      vp: this.d.paths.vm(id),
      signal,
      progress,
      deadline: Date.now() + (this.d.bootTimeoutMs ?? 180_000),
      sync: opts.sync === false || restore ? undefined : { home: opts.home },
    };
    try {
      await runBoot(boot, {
        vms: this.d.vms,
        live: this.live,
        accel: this.d.accel,
        tap: this.d.tap,
        kernelCmdline: this.d.kernelCmdline,
        authorizedKey: this.d.clientKey.publicKey,
        onTapAttached: this.d.onTapAttached,
        now: this.now,
        bootTimeoutMs: this.d.bootTimeoutMs ?? 180_000,
        silentConsoleMs: this.d.silentConsoleMs,
        identity: this.d.identity,
        agentBundle: this.d.agentBundle,
        log: this.d.log,
      }, restore ? restoreSteps(restore) : undefined);
      vm = this.d.vms.update(id, { state: 'running' });
      const live = this.live.get(id)!;
      this.guest.forwarder.start(vm, live);
      // The agent comes up a few seconds after sshd under TCG; commands use SSH until it answers.
      // A warm pool's VM is given the clock when it is taken (it stands still while parked).
      if (!restore && vm.pool === null) this.guest.setClockWhenAgentAnswers(vm);
      this.live.connectAgentInBackground(vm);
      this.capConsole(id, live.watch.signal);
      this.d.log.info({ vm: vm.name, pid: live.handle.pid, accel: vm.accel }, 'vm running');
      this.d.onVmsChanged?.();
      return this.info(vm);
    } catch (e) {
      await this.live.teardown(id);
      // A Ctrl-C (or a client gone) during any step is a cancelled start: the VM is stopped, not broken.
      // A full host disk met on the way is said as such; the VM is stopped, not broken, once there is room.
      const full = asNoSpace(e, vm.dir, `start VM '${vm.name}'`);
      const err = signal?.aborted ? new BangerError(ErrorCode.Cancelled, `starting VM '${vm.name}' was cancelled`) : toBangerError(full);
      if (err.code === ErrorCode.Cancelled) this.d.vms.update(id, { state: 'stopped', lastError: 'start cancelled' });
      else if (full !== e) this.d.vms.update(id, { state: 'stopped', lastError: err.message });
      else this.d.vms.update(id, { state: 'error', lastError: err.message });
      throw err;
    }
  }

  async stop(name: string, opts: { force?: boolean; timeoutSeconds?: number } = {}, signal?: AbortSignal): Promise<VmInfo> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, () => this.stopLocked(vm.id, opts, signal), signal);
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
      const exited = await this.live.shutdownGuest(vm, timeoutMs, signal);
      if (!exited) this.d.log.warn({ vm: vm.name }, 'graceful shutdown timed out; forcing');
    }
    await this.live.teardown(id);
    this.d.vms.update(id, { state: 'stopped' });
    this.d.log.info({ vm: vm.name }, 'vm stopped');
    return this.info(this.d.vms.byId(id)!);
  }

  /** Changes a VM's CPUs, memory or work disk size (settings.ts), under its lifecycle lock. */
  async set(name: string, changes: VmSettingsChange, signal?: AbortSignal): Promise<VmInfo> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, async () => {
      const cur = this.d.vms.byId(vm.id);
      if (!cur) throw notFound(`no VM named '${name}'`, 'list VMs with `banger vm list`');
      const next = await applyVmSettings(cur, changes, { running: this.live.has(vm.id), vp: this.d.paths.vm(vm.id), run: this.d.run }, signal);
      this.d.log.info({ vm: name, ...changes }, 'vm settings changed');
      return this.info(this.d.vms.update(vm.id, next));
    }, signal);
  }

  async restart(name: string, progress: Progress, signal?: AbortSignal, opts: StartOptions = {}): Promise<VmInfo> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, async () => {
      await this.stopLocked(vm.id, {}, signal);
      return this.startLocked(vm.id, progress, signal, opts);
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
      await removeVmFiles(vm.dir, () => this.d.vms.delete(vm.id));
      this.d.log.info({ vm: name }, 'vm deleted');
      this.d.onVmsChanged?.();
      this.d.onVmDeleted?.();
      return { deleted: name };
    }, signal);
  }

  /**
   * The VM record of a running VM, checked under its lifecycle lock (so no start/stop is half done),
   * which is released before the caller does guest I/O.
   */
  async runningUnderLock(name: string, signal?: AbortSignal): Promise<VmRecord> {
    const vm = this.get(name);
    return this.lifecycle.run(vm.id, async () => this.requireRunning(this.d.vms.byId(vm.id) ?? vm), signal);
  }

  /** Runs `fn` on the running VM `name` under its lifecycle lock (the snapshot service's way in). */
  async withRunning<T>(name: string, fn: (r: RunningVm) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const vm0 = this.get(name);
    return this.lifecycle.run(vm0.id, async () => {
      const vm = this.requireRunning(this.d.vms.byId(vm0.id) ?? vm0);
      const live = this.live.get(vm.id)!;
      return fn({ vm, vp: this.d.paths.vm(vm.id), handle: live.handle, driver: live.driver, hasAgent: live.hasAgent });
    }, signal);
  }

  records(): VmRecord[] {
    return this.d.vms.list();
  }

  holdIdentity(vm: VmRecord, signal?: AbortSignal): Promise<void> {
    return this.guest.holdIdentity(vm, signal);
  }

  private requireRunning(vm: VmRecord): VmRecord {
    if (vm.state === 'running' && this.live.has(vm.id)) return vm;
    throw notRunningError(vm);
  }

  // ---------- daemon start and stop ----------

  /** Makes records agree with reality after a daemon (re)start (see reconcile.ts). */
  async reconcile(): Promise<void> {
    await reconcileVms({
      paths: this.d.paths,
      vms: this.d.vms,
      drivers: this.d.drivers,
      live: this.live,
      forwarder: this.guest.forwarder,
      tap: this.d.tap,
      log: this.d.log,
      processes: this.d.processes,
    });
    for (const vm of this.d.vms.list()) {
      const live = this.live.get(vm.id);
      if (live) this.capConsole(vm.id, live.watch.signal);
    }
  }

  /** Closes connections and watchers; VMs keep running (they outlive the daemon). */
  detachAll(): void {
    this.live.detachAll();
  }

  /** Names of running VMs in tap mode (network down refuses while there are any). */
  runningTapVms(): string[] {
    return this.d.vms.list().filter((v) => v.networkMode === 'tap' && this.live.has(v.id)).map((v) => v.name);
  }

  runningCount(): number {
    return this.live.size;
  }

  // ---------- internals ----------

  private onUnexpectedExit(id: string): void {
    const vm = this.d.vms.byId(id);
    if (vm && vm.state !== 'starting')
      this.d.vms.update(id, { state: 'stopped', lastError: 'the VM stopped on its own (guest poweroff or VMM exit)' });
    this.d.log.warn({ vm: vm?.name }, 'vm process exited');
    this.d.onVmsChanged?.();
  }

  /** Keeps the running VM's console log under its cap until the VM is let go of. */
  private capConsole(id: string, signal: AbortSignal): void {
    keepConsoleLogCapped(this.d.paths.vm(id).consoleLog, this.d.consoleCapIntervalMs ?? 5000, signal);
  }
}
