import { failedPrecondition, type BangerError } from '../../../errors/index.js';
import type { VmRecord } from '../../store/repos/vms.js';

/** The error for a command that needs `vm` running: why it is not (by its state), and what to do next. */
export function notRunningError(vm: Pick<VmRecord, 'name' | 'state'>): BangerError {
  const start = `start it with \`banger vm start ${vm.name}\``;
  const [why, hint] = {
    created: ['is not running: it has never been started', start],
    stopped: ['is not running (stopped)', start],
    error: ['is not running: its last start failed', `see why with \`banger vm show ${vm.name}\`, then ${start}`],
    starting: ['is still starting', 'try again once `banger vm start` has returned'],
    stopping: ['is stopping', `once it has stopped, ${start}`],
    running: ['is not reachable', `restart it with \`banger vm restart ${vm.name}\``],
  }[vm.state];
  return failedPrecondition(`VM '${vm.name}' ${why}`, hint);
}
