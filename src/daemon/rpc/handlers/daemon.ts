import { DaemonMethods, DoctorMethods, type DaemonStatus } from '../../../protocol/daemon.js';
import type { DoctorService } from '../../services/doctor.js';
import { handler, type Handler } from '../server.js';

export interface DaemonHandlerDeps {
  doctor: DoctorService;
  status: () => DaemonStatus;
  /** Stops the daemon after the reply has been sent. */
  shutdown: () => void;
}

/** daemon.status, daemon.stop and doctor.run. */
export function daemonHandlers(d: DaemonHandlerDeps): Handler[] {
  return [
    handler(DaemonMethods.status, async () => d.status()),
    handler(DaemonMethods.stop, async () => {
      d.shutdown();
      return { stopping: true as const };
    }),
    handler(DoctorMethods.run, async (_p, ctx) => d.doctor.run(ctx.signal)),
  ];
}
