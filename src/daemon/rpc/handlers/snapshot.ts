import { SnapshotMethods } from '../../../protocol/snapshot.js';
import type { SnapshotService } from '../../services/snapshot/service.js';
import type { VmService } from '../../services/vm/service.js';
import { validateVmName } from '../../services/vm/names.js';
import { handler, type Handler } from '../server.js';

/** snapshot.create, snapshot.list, snapshot.show, snapshot.delete, vm.fork. */
export function snapshotHandlers(snapshots: SnapshotService, vms: VmService): Handler[] {
  return [
    handler(SnapshotMethods.create, async (p, ctx) => snapshots.create(p, ctx.signal)),
    handler(SnapshotMethods.list, async () => snapshots.list()),
    handler(SnapshotMethods.show, async (p) => snapshots.show(p.name)),
    handler(SnapshotMethods.delete, async (p) => snapshots.delete(p.name)),
    handler(SnapshotMethods.fork, async (p, ctx) => {
      const prefix = p.name ?? `${p.vm}-fork`;
      const names = Array.from({ length: p.count }, (_, i) => `${prefix}-${i + 1}`);
      names.forEach((n) => validateVmName(n));
      // The source is paused only while the snapshot is taken; the copies resume from it side by side.
      const snap = await snapshots.create({ vm: p.vm, name: `${prefix}-${Date.now().toString(36)}` }, ctx.signal);
      const source = await snapshots.source(snap.id);
      const made = await Promise.all(
        names.map(async (name) => {
          const created = await vms.create({ name, restore: source }, ctx.progress, ctx.signal);
          return vms.start(created.name, ctx.progress, ctx.signal, { sync: false });
        }),
      );
      return { snapshot: await snapshots.show(snap.id), vms: made };
    }),
  ];
}
