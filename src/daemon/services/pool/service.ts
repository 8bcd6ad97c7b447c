import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { alreadyExists, failedPrecondition, isBangerError } from '../../../errors/index.js';
import type { NetworkMode, ProgressEvent } from '../../../protocol/common.js';
import type { PoolInfo } from '../../../protocol/pool.js';
import type { VmCreateParams, VmInfo } from '../../../protocol/vm.js';
import type { Logger } from '../../../shared/logger.js';
import type { Paths } from '../../../shared/paths.js';
import { AgentGuestSession } from '../../guest/agent-session.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { KeyedMutex } from '../locks.js';
import { applyIdentity, prestartIdentity, type PendingIdentity } from '../../guest/identity.js';
import type { IdentitySync } from '../sync/service.js';
import { repinHostKey } from '../vm/files.js';
import type { VmPoolHooks } from '../vm/pool-hooks.js';
import { generateVmName, validateVmName } from '../vm/names.js';
import { VM_DEFAULTS, type VmCreateOptions } from '../vm/create.js';
import type { RunningVm } from '../vm/service.js';

/** What the pool needs of the VM service. */
export interface PoolVms {
  create(opts: VmCreateOptions, progress: (ev: ProgressEvent) => void, signal?: AbortSignal): Promise<VmInfo>;
  start(name: string, progress: (ev: ProgressEvent) => void, signal?: AbortSignal, opts?: { sync?: boolean }): Promise<VmInfo>;
  delete(name: string, opts: { force?: boolean }, signal?: AbortSignal): Promise<{ deleted: string }>;
  show(name: string): VmInfo;
  withRunning<T>(name: string, fn: (r: RunningVm) => Promise<T>, signal?: AbortSignal): Promise<T>;
  records(): VmRecord[];
  /** Park, resume, the agent and the hand-over of a pool VM, all under `withRunning` (vm/pool-hooks.ts). */
  pool: Pick<VmPoolHooks, 'park' | 'unpark' | 'agent' | 'adopt' | 'recordSynced'>;
}

export interface PoolServiceDeps {
  paths: Paths;
  vms: PoolVms;
  /** Checks that an image exists and is built; its error says how to build it. */
  requireImage: (name: string) => void;
  defaultNetwork: NetworkMode;
  identity?: Pick<IdentitySync, 'sync'>;
  onVmsChanged?: () => void;
  log: Logger;
  /** How long a failed refill waits before the next try (default 30 s). */
  retryMs?: number;
  /** How long after a take the pool starts booting its replacement (default REFILL_AFTER_TAKE_MS). */
  refillAfterTakeMs?: number;
}

const poolsSchema = z.record(z.string(), z.number().int().min(0).max(16));

/** How long a new pool VM's agent may take to answer after its boot (Node starts slowly under TCG). */
const AGENT_WAIT_MS = 120_000;

/**
 * How long after a take (or a failed take, whose caller boots a VM) the pool starts booting a replacement. A boot
 * takes the host's CPUs for seconds under emulation; started at once, it ran beside the command the user had
 * just asked for: on this 2-core host `vm.exec` of `true` right after a take took 60-114 ms with the refill's QEMU
 * starting beside it, 40-70 ms without. The user's first moments go first; the pool refills right after.
 */
export const REFILL_AFTER_TAKE_MS = 2000;

/**
 * Warm pools (`banger pool set IMAGE --size K`): K VMs of the image booted with the default CPUs, memory
 * and disk, then parked (their CPUs stopped: no host CPU while they wait). `vm run` / `vm create --start`
 * whose options are the pool's takes one (`take`): the VM gets the user's name (record, pinned host key,
 * hostname in the guest), its CPUs start, its clock is set and the user's identity synced, all over the
 * guest agent; it is then an ordinary VM. The pool refills in the background, one boot at a time.
 *
 * A pool VM is an ordinary VM record marked `pool` (its image's name): `vm list` leaves it out. Pools are
 * kept in `pools.json`. After a daemon restart the parked VMs are deleted and booted again: a parked VM
 * that another daemon left cannot be told apart from one it left half-made, and a boot is cheap next to a
 * wrong VM handed to a user.
 */
export class PoolService {
  private readonly fills = new KeyedMutex();
  /** Serialises the choice of a parked VM, so two takes never get the same one. */
  private readonly picks = new KeyedMutex();
  /** Ids of the pool VMs that are parked and may be taken. */
  private readonly parked = new Set<string>();
  /** The identity program each parked VM runs, waiting for its name (identity.ts prestartIdentity). */
  private readonly identities = new Map<string, PendingIdentity>();
  private readonly filling = new Map<string, number>();
  /** Stops the fill under way of an image's pool (when the pool is made smaller). */
  private readonly fillAborts = new Map<string, AbortController>();
  private readonly taken = new Map<string, number>();
  private readonly lastError = new Map<string, string>();
  private readonly stopping = new AbortController();
  /** A take's replacement boot waiting to start (refillSoon), per image. */
  private readonly refillTimers = new Map<string, NodeJS.Timeout>();

  constructor(private readonly d: PoolServiceDeps) {}

  async set(image: string, size: number): Promise<PoolInfo> {
    if (size > 0) this.d.requireImage(image);
    const pools = await this.read();
    if (size === 0) delete pools[image];
    else pools[image] = size;
    await this.write(pools);
    this.d.log.info({ image, size }, 'pool set');
    if (this.members(image).length > size && this.fillAborts.has(image)) {
      // A boot under way would make the pool too big: it is stopped (its VM removed) before this returns.
      this.fillAborts.get(image)!.abort();
      await this.fills.run(image, async () => {});
    }
    await this.trim(image, size);
    if (size > 0) this.refill(image);
    return this.info(image, size);
  }

  async status(): Promise<PoolInfo[]> {
    const pools = await this.read();
    return Object.entries(pools).map(([image, size]) => this.info(image, size));
  }

  /** At daemon start: pool VMs of an earlier daemon go, and every pool is filled again. */
  async reconcile(): Promise<void> {
    for (const vm of this.d.vms.records().filter((v) => v.pool !== null)) await this.remove(vm, 'left by an earlier daemon');
    for (const image of Object.keys(await this.read())) this.refill(image);
  }

  /** Stops refilling (daemon shutdown); parked VMs stay until the next daemon removes them. */
  close(): void {
    this.stopping.abort();
    for (const t of this.refillTimers.values()) clearTimeout(t);
    this.refillTimers.clear();
  }

  /**
   * Takes a parked VM for a `vm.create` with `start` when the request's options are the pool's; undefined
   * when there is no pool, nothing parked, or the options differ (the caller then boots a VM as usual).
   */
  async take(p: VmCreateParams, progress: (ev: ProgressEvent) => void, signal?: AbortSignal): Promise<VmInfo | undefined> {
    if (p.pool === false || !p.start || p.from !== undefined) return undefined;
    const image = p.image ?? VM_DEFAULTS.image;
    if (p.name !== undefined) validateVmName(p.name);
    const pools = await this.read();
    if (!pools[image]) return undefined;
    const name = await this.picks.run(image, async () => {
      const all = this.d.vms.records();
      const vm = all.find((v) => v.pool === image && v.state === 'running' && this.parked.has(v.id) && matches(p, v, this.d.defaultNetwork));
      if (!vm) return undefined;
      const taken = new Set(all.map((v) => v.name));
      const name = p.name ?? generateVmName((n) => taken.has(n));
      if (taken.has(name))
        throw alreadyExists(`a VM named '${name}' already exists`, `pick another --name, or \`banger vm delete ${name}\``);
      this.parked.delete(vm.id);
      return { vm, name };
    });
    if (!name) return undefined;
    const { vm } = name;
    const pending = this.identities.get(vm.id);
    this.identities.delete(vm.id);
    progress({ kind: 'step', step: 'take a VM from the warm pool', index: 1, total: 1 });
    try {
      // Milliseconds each part of the hand-over took, for the log.
      const ms: Record<string, number> = {};
      const timed = async <T>(part: string, work: Promise<T>): Promise<T> => {
        const t0 = performance.now();
        const out = await work;
        ms[part] = Math.round(performance.now() - t0);
        return out;
      };
      const info = await this.d.vms.withRunning(vm.name, async (r) => {
        const hooks = this.d.vms.pool;
        const rec = await timed(
          'rename',
          repinHostKey(r.vp, name.name).then(() => hooks.adopt(vm.id, name.name)),
        );
        await timed('resume', hooks.unpark(vm.id, signal));
        const agent = await timed('agent', hooks.agent(rec, signal));
        const guest = new AgentGuestSession(agent);
        // The clock (it stood still while the VM was parked) and the name, in one guest process
        // (identity.ts), started before the park: a process start is the largest part of a take under
        // emulation. Should that program be gone, a new one does it.
        const fresh = () => applyIdentity(guest, { name: rec.name, clock: true }, signal);
        const rename = () =>
          pending
            ? pending.finish(rec.name).catch((e: unknown) => {
                this.d.log.warn({ vm: rec.name, err: (e as Error).message }, 'the identity program started before the park failed; starting another');
                return fresh();
              })
            : fresh();
        const sync = async () => {
          if (p.sync === false || !this.d.identity) return;
          try {
            const synced = await this.d.identity.sync(guest, p.home, signal);
            hooks.recordSynced(rec.id, synced);
            for (const w of synced.warnings) progress({ kind: 'notice', message: `sync: ${w}` });
          } catch (e) {
            progress({ kind: 'notice', message: `identity sync failed: ${(e as Error).message} (retry with \`banger vm sync ${rec.name}\`)` });
          }
        };
        await Promise.all([timed('clock+hostname', rename()), timed('sync', sync())]);
        return rec;
      }, signal);
      this.taken.set(image, (this.taken.get(image) ?? 0) + 1);
      this.d.log.info({ vm: info.name, image, ms }, 'vm taken from the warm pool');
      this.d.onVmsChanged?.();
      return this.d.vms.show(info.name);
    } catch (e) {
      // A VM that could not be handed over is not handed to anyone: it goes, and the caller boots one.
      this.d.log.warn({ vm: vm.id, err: (e as Error).message }, 'taking a pool VM failed; booting one instead');
      const now = this.d.vms.records().find((v) => v.id === vm.id);
      if (now) await this.d.vms.delete(now.name, { force: true }).catch(() => undefined);
      if (signal?.aborted) throw e;
      return undefined;
    } finally {
      this.refillSoon(image);
    }
  }

  /**
   * Refills `image`'s pool REFILL_AFTER_TAKE_MS from now (a take's replacement); close() clears the timer, and a
   * fill started as the daemon stops returns at once. A refill already due keeps its time: takes in a row never put it off.
   */
  private refillSoon(image: string): void {
    if (this.refillTimers.has(image)) return;
    const timer = setTimeout(() => {
      this.refillTimers.delete(image);
      this.refill(image);
    }, this.d.refillAfterTakeMs ?? REFILL_AFTER_TAKE_MS);
    timer.unref();
    this.refillTimers.set(image, timer);
  }

  /** Starts filling `image`'s pool in the background (one fill per image at a time). */
  private refill(image: string): void {
    if (this.fills.isLocked(image)) return;
    const stop = new AbortController();
    this.fillAborts.set(image, stop);
    void this.fills
      .run(image, () => this.fill(image, AbortSignal.any([this.stopping.signal, stop.signal])))
      .catch((e: unknown) => {
        this.d.log.warn({ image, err: (e as Error).message }, 'pool refill failed');
      })
      .finally(() => {
        if (this.fillAborts.get(image) === stop) this.fillAborts.delete(image);
      });
  }

  private async fill(image: string, signal: AbortSignal): Promise<void> {
    for (;;) {
      if (signal.aborted) return;
      const size = (await this.read())[image] ?? 0;
      if (this.members(image).length >= size) return;
      this.filling.set(image, (this.filling.get(image) ?? 0) + 1);
      try {
        await this.boot(image, signal);
        this.lastError.delete(image);
      } catch (e) {
        if (signal.aborted) return;
        const why = isBangerError(e) || e instanceof Error ? e.message : String(e);
        this.lastError.set(image, why);
        this.d.log.warn({ image, err: why }, 'pool refill failed; retrying later');
        await sleep(this.d.retryMs ?? 30_000, undefined, { signal }).catch(() => undefined);
      } finally {
        this.filling.set(image, (this.filling.get(image) ?? 1) - 1);
      }
    }
  }

  /** Boots one VM for `image`'s pool, waits for its agent, parks it. */
  private async boot(image: string, signal: AbortSignal): Promise<void> {
    const name = `pool-${image}-${randomBytes(3).toString('hex')}`.slice(0, 63);
    const quiet = () => {};
    const created = await this.d.vms.create({ name, image, network: 'loopback', parkFor: image }, quiet, signal);
    try {
      await this.d.vms.start(created.name, quiet, signal, { sync: false });
      await this.d.vms.withRunning(created.name, async (r) => {
        const hooks = this.d.vms.pool;
        const deadline = AbortSignal.any([signal, AbortSignal.timeout(AGENT_WAIT_MS)]);
        let agent;
        for (;;) {
          try {
            agent = await hooks.agent(r.vm, deadline);
            break;
          } catch (e) {
            if (deadline.aborted) throw failedPrecondition(`pool VM ${created.name}: its guest agent did not answer (${(e as Error).message})`);
            await sleep(1000, undefined, { signal: deadline }).catch(() => undefined);
          }
        }
        // The program that will give the VM its name and clock when taken starts now; a take without it
        // starts one then.
        const pending = await prestartIdentity(new AgentGuestSession(agent), { clock: true }, this.stopping.signal).catch((e: unknown) => {
          this.d.log.warn({ vm: created.name, err: (e as Error).message }, 'pool VM: the identity program did not start; its take will start one');
          return undefined;
        });
        if (pending) this.identities.set(created.id, pending);
        await hooks.park(r.vm.id, signal);
      }, signal);
      // Trimmed while it booted: it goes rather than waits.
      const size = (await this.read())[image] ?? 0;
      if (this.members(image).length > size) throw new Error('the pool was made smaller while this VM booted');
      this.parked.add(created.id);
      this.d.log.info({ vm: created.name, image }, 'pool VM parked');
    } catch (e) {
      this.identities.delete(created.id);
      await this.d.vms.delete(created.name, { force: true }).catch(() => undefined);
      throw e;
    }
  }

  /** Removes parked VMs beyond `size`. */
  private async trim(image: string, size: number): Promise<void> {
    const doomed = await this.picks.run(image, async () => {
      const parked = this.members(image).filter((v) => this.parked.has(v.id));
      const extra = parked.slice(0, Math.max(0, parked.length - size));
      for (const vm of extra) {
        this.parked.delete(vm.id);
        this.identities.delete(vm.id);
      }
      return extra;
    });
    for (const vm of doomed) await this.remove(vm, 'the pool was made smaller');
  }

  private async remove(vm: VmRecord, why: string): Promise<void> {
    try {
      await this.d.vms.delete(vm.name, { force: true });
      this.d.log.info({ vm: vm.name, why }, 'pool VM removed');
    } catch (e) {
      this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'could not remove a pool VM');
    }
  }

  /** The VMs of `image`'s pool: parked, and booting to be. */
  private members(image: string): VmRecord[] {
    return this.d.vms.records().filter((v) => v.pool === image);
  }

  private info(image: string, size: number): PoolInfo {
    const members = this.members(image);
    return {
      image,
      size,
      ready: members.filter((v) => this.parked.has(v.id)).length,
      filling: this.filling.get(image) ?? 0,
      taken: this.taken.get(image) ?? 0,
      lastError: this.lastError.get(image) ?? null,
    };
  }

  private async read(): Promise<Record<string, number>> {
    let text: string;
    try {
      text = await readFile(this.d.paths.poolsFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw e;
    }
    const r = poolsSchema.safeParse(JSON.parse(text));
    if (!r.success) throw failedPrecondition(`${this.d.paths.poolsFile} is not a pool list`, 'fix or delete it, then `banger pool set IMAGE --size K` again');
    return r.data;
  }

  private async write(pools: Record<string, number>): Promise<void> {
    const tmp = `${this.d.paths.poolsFile}.tmp`;
    await writeFile(tmp, JSON.stringify(pools, null, 2) + '\n', { mode: 0o600 });
    await rename(tmp, this.d.paths.poolsFile);
  }
}

/** Whether a `vm.create` asks for exactly what the pool VM `v` is (the image's defaults, loopback, agent on). */
export function matches(p: VmCreateParams, v: VmRecord, defaultNetwork: NetworkMode): boolean {
  return (
    (p.cpus ?? VM_DEFAULTS.cpus) === v.vcpus &&
    (p.memoryMib ?? VM_DEFAULTS.memoryMib) === v.memoryMib &&
    (p.diskSizeMib ?? VM_DEFAULTS.diskSizeMib) === v.diskSizeMib &&
    (p.network ?? defaultNetwork) === v.networkMode &&
    (p.vmm === undefined || p.vmm === 'auto' || p.vmm === v.vmm) &&
    (p.accel === undefined || p.accel === 'auto' || p.accel === v.accel) &&
    (p.agent ?? true) === v.agent &&
    (p.egress ?? false) === v.egress
  );
}
