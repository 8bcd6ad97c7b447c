import { SnapshotMethods } from '../../../protocol/snapshot.js';
import type { SnapshotService } from '../../services/snapshot/service.js';
import { handler, type Handler } from '../server.js';

/** snapshot.create, snapshot.list, snapshot.show, snapshot.delete. */
export function snapshotHandlers(snapshots: SnapshotService): Handler[] {
  return [
    handler(SnapshotMethods.create, async (p, ctx) => snapshots.create(p, ctx.signal)),
    handler(SnapshotMethods.list, async () => snapshots.list()),
    handler(SnapshotMethods.show, async (p) => snapshots.show(p.name)),
    handler(SnapshotMethods.delete, async (p) => snapshots.delete(p.name)),
  ];
}
