import { ErrorCode, cancelled, failedPrecondition, isBangerError } from '../../../errors/index.js';
import { VmMethods, type VmCreateParams, type VmInfo } from '../../../protocol/vm.js';
import type { Logger } from '../../../shared/logger.js';
import type { VmCreateOptions } from '../../services/vm/create.js';
import type { VmService } from '../../services/vm/service.js';
import type { RestoreSource } from '../../services/snapshot/restore.js';
import { capText, handler, type CallContext, type Handler } from '../server.js';

export interface VmHandlerDeps {
  vms: VmService;
  log: Logger;
  /** Resolves `vm.create`'s `from` (a snapshot name or id) into what the VM is restored from. */
  snapshotSource?: (ref: string) => Promise<RestoreSource>;
  /** A parked VM of a warm pool for a `vm.create` with `start` whose options are the pool's, if any. */
  takeFromPool?: (p: VmCreateParams, ctx: CallContext) => Promise<VmInfo | undefined>;
}

/** vm.create with `start`: a warm pool's parked VM when one fits, else a new VM booted. */
async function createStarted(d: VmHandlerDeps, p: VmCreateParams, ctx: CallContext): Promise<VmInfo> {
  const taken = await d.takeFromPool?.(p, ctx);
  if (taken) return taken;
  const created = await d.vms.create(await createOptions(d, p), ctx.progress, ctx.signal);
  return d.vms.start(created.name, ctx.progress, ctx.signal, p);
}

/** vm.create's params with `from` resolved to the snapshot it names. */
async function createOptions(d: VmHandlerDeps, p: VmCreateParams): Promise<VmCreateOptions> {
  const { from, ...rest } = p;
  if (from === undefined) return rest;
  if (!d.snapshotSource) throw failedPrecondition('snapshots are not available in this daemon');
  return { ...rest, restore: await d.snapshotSource(from) };
}

/**
 * vm.create with `rm`: the VM belongs to the client's connection. It is deleted (forced) when that
 * connection closes, and at once when creating or starting it fails or is cancelled, so a client that
 * dies (killed, Ctrl-C twice, lost terminal) leaves nothing behind.
 */
async function createOwned(d: VmHandlerDeps, p: VmCreateParams, ctx: CallContext): Promise<VmInfo> {
  const created = (p.start ? await d.takeFromPool?.(p, ctx) : undefined) ?? (await d.vms.create(await createOptions(d, p), ctx.progress, ctx.signal));
  let removal: Promise<void> | undefined;
  const remove = () =>
    (removal ??= d.vms.delete(created.name, { force: true }).then(
      () => d.log.info({ vm: created.name }, 'deleted a --rm VM: its client is gone or its start failed'),
      (e: unknown) => {
        if (isBangerError(e) && e.code === ErrorCode.NotFound) return; // the client deleted it itself
        d.log.warn({ vm: created.name, err: capText(String(e)) }, 'could not delete a --rm VM');
      },
    ));
  const sub = ctx.connection.onClose(() => void remove());
  try {
    // A client gone before the listener above was added has aborted the signal: treat it as cancelled.
    if (ctx.signal.aborted) throw cancelled();
    // A VM from the pool is running already (start returns it as it is).
    return p.start ? await d.vms.start(created.name, ctx.progress, ctx.signal, p) : created;
  } catch (e) {
    sub.dispose();
    await remove();
    throw e;
  }
}

/** vm.create, vm.start, vm.stop, vm.restart, vm.sync, vm.delete, vm.list, vm.show, vm.set, vm.logs, vm.ssh-target, vm.ports. */
export function vmHandlers(d: VmHandlerDeps): Handler[] {
  const { vms } = d;
  return [
    handler(VmMethods.create, async (p, ctx) => {
      if (p.rm) return createOwned(d, p, ctx);
      if (p.start) return createStarted(d, p, ctx);
      return vms.create(await createOptions(d, p), ctx.progress, ctx.signal);
    }),
    handler(VmMethods.start, async (p, ctx) => vms.start(p.name, ctx.progress, ctx.signal, p)),
    handler(VmMethods.stop, async (p, ctx) => vms.stop(p.name, p, ctx.signal)),
    handler(VmMethods.restart, async (p, ctx) => vms.restart(p.name, ctx.progress, ctx.signal, p)),
    handler(VmMethods.sync, async (p, ctx) => vms.guest.syncIdentity(p.name, p.home, ctx.signal)),
    handler(VmMethods.delete, async (p, ctx) => vms.delete(p.name, p, ctx.signal)),
    handler(VmMethods.list, async () => vms.list()),
    handler(VmMethods.show, async (p) => vms.show(p.name)),
    handler(VmMethods.set, async (p, ctx) => vms.set(p.name, { cpus: p.cpus, memoryMib: p.memoryMib, diskSizeMib: p.diskSizeMib }, ctx.signal)),
    handler(VmMethods.logs, async (p) => ({ console: await vms.consoleLog(p.name, p.tailBytes) })),
    handler(VmMethods.sshTarget, async (p) => vms.sshTarget(p.name)),
    handler(VmMethods.ports, async (p, ctx) => vms.guest.ports(p.name, ctx.signal)),
  ];
}
