import { SnapshotMethods } from '../../../protocol/snapshot.js';
import type { SnapshotService } from '../../services/snapshot/service.js';
import type { VmService } from '../../services/vm/service.js';
import { forkVm, type ForkDeps } from '../../services/snapshot/fork.js';
import { handler, type Handler } from '../server.js';

/** snapshot.create, snapshot.list, snapshot.show, snapshot.delete, vm.fork. */
export function snapshotHandlers(snapshots: SnapshotService, vms: VmService): Handler[] {
  return [
    handler(SnapshotMethods.create, async (p, ctx) => snapshots.create(p, ctx.signal)),
    handler(SnapshotMethods.list, async () => snapshots.list()),
    handler(SnapshotMethods.show, async (p) => snapshots.show(p.name)),
    handler(SnapshotMethods.delete, async (p) => snapshots.delete(p.name)),
    handler(SnapshotMethods.fork, async (p, ctx) => {
      const deps: ForkDeps = {
        snapshots,
        vms: {
          nameTaken: (name) => vms.records().some((v) => v.name === name),
          create: (o, progress, signal) => vms.create(o, progress, signal),
          start: (name, progress, signal, o) => vms.start(name, progress, signal, o),
          delete: (name, o) => vms.delete(name, o),
        },
      };
      return forkVm(deps, p, ctx.progress, ctx.signal);
    }),
  ];
}
