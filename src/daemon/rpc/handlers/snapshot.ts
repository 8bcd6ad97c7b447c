import { SnapshotMethods } from '../../../protocol/snapshot.js';
import type { SnapshotService } from '../../services/snapshot/service.js';
import type { VmService } from '../../services/vm/service.js';
import { forkVm } from '../../services/snapshot/fork.js';
import { handler, type Handler } from '../server.js';

/** snapshot.create, snapshot.list, snapshot.show, snapshot.delete, vm.fork. */
export function snapshotHandlers(snapshots: SnapshotService, vms: VmService): Handler[] {
  return [
    handler(SnapshotMethods.create, async (p, ctx) => snapshots.create(p, ctx.signal)),
    handler(SnapshotMethods.list, async () => snapshots.list()),
    handler(SnapshotMethods.show, async (p) => snapshots.show(p.name)),
    handler(SnapshotMethods.delete, async (p) => snapshots.delete(p.name)),
    handler(SnapshotMethods.fork, async (p, ctx) => forkVm({ snapshots, vms }, p, ctx.progress, ctx.signal)),
  ];
}
