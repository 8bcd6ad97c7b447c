import { StatsMethods } from '../../../protocol/session.js';
import type { VmService } from '../../services/vm/service.js';
import { handler, type Handler } from '../server.js';

/** vm.stats: one running VM's resource use, from its guest agent. */
export function statsHandlers(vms: VmService): Handler[] {
  return [handler(StatsMethods.vm, async (p, ctx) => vms.guest.stats(p.name, ctx.signal))];
}
