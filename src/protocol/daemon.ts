import { z } from 'zod';
import { method } from './common.js';

/** RPC methods about the daemon itself: `banger daemon status|stop` and `banger doctor`. */

export const daemonStatusSchema = z.object({
  pid: z.number(),
  version: z.string(),
  /** The build of banger the daemon runs (see BUILD_ID). Optional: daemons before it did not say. */
  build: z.string().optional(),
  /** Clients connected right now, the caller included. */
  connections: z.number().optional(),
  home: z.string(),
  socket: z.string(),
  logFile: z.string(),
  startedAt: z.string(),
  vms: z.object({ total: z.number(), running: z.number() }),
});
export type DaemonStatus = z.infer<typeof daemonStatusSchema>;

export const DOCTOR_STATUSES = ['ok', 'warn', 'fail'] as const;
export type DoctorStatus = (typeof DOCTOR_STATUSES)[number];

export const doctorCheckSchema = z.object({
  name: z.string(),
  status: z.enum(DOCTOR_STATUSES),
  detail: z.string(),
  /** What to run or change to fix it; present when status is not ok. */
  fix: z.string().optional(),
});
export type DoctorCheck = z.infer<typeof doctorCheckSchema>;

export const doctorReportSchema = z.object({ ok: z.boolean(), checks: z.array(doctorCheckSchema) });
export type DoctorReport = z.infer<typeof doctorReportSchema>;

export const DaemonMethods = {
  status: method('daemon.status', null, daemonStatusSchema),
  /** Replies, then stops the daemon; VMs keep running. */
  stop: method('daemon.stop', null, z.object({ stopping: z.literal(true) })),
} as const;

export const DoctorMethods = {
  run: method('doctor.run', null, doctorReportSchema),
} as const;
