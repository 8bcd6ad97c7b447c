import { z } from 'zod';
import { RpcNotification, method } from './common.js';

/**
 * RPC methods of `banger vm session` and `banger vm stats`. A session is a process owned by the guest agent
 * (not by the CLI, not by the daemon's memory): it outlives both, and every byte it writes is kept on the
 * guest's work disk under a byte offset, so output is read again from any offset after any disconnect.
 */

/** Session names: 1-64 of letters, digits, `.`, `_`, `-`, starting with a letter or digit. */
export const SESSION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const sessionNameSchema = z.string().regex(SESSION_NAME_RE, 'a session name of 1-64 letters, digits, ., _ or -');

export const SESSION_STATES = ['running', 'exited', 'ended'] as const;
export const OUTPUT_STREAMS = ['stdout', 'stderr'] as const;
export type OutputStream = (typeof OUTPUT_STREAMS)[number];

export const sessionInfoSchema = z.object({
  name: z.string(),
  /** Guest pid of the session's process while it runs. */
  pid: z.number().nullable(),
  /** running; exited (with exitCode or signal); ended: the VM stopped under it. */
  state: z.enum(SESSION_STATES),
  exitCode: z.number().nullable(),
  signal: z.string().nullable(),
  argv: z.array(z.string()),
  tty: z.boolean(),
  cwd: z.string().nullable(),
  startedAt: z.string(),
  endedAt: z.string().nullable(),
  /** Bytes the process has written so far to each stream (the offsets the next bytes get). */
  stdoutBytes: z.number(),
  stderrBytes: z.number(),
  /** The per-stream cap on kept output; once reached, later output is dropped and `capped` says so. */
  capBytes: z.number(),
  capped: z.boolean(),
  /** Who holds the exclusive attach, if anyone (a client description). */
  attachedBy: z.string().nullable(),
});
export type SessionInfo = z.infer<typeof sessionInfoSchema>;

const sessionRef = z.object({ vm: z.string().min(1), session: sessionNameSchema });
/** Where reading starts: the first byte, the current end, or a byte offset. */
const fromSchema = z.union([z.literal('start'), z.literal('end'), z.number().int().nonnegative()]);

export const sessionStartParamsSchema = z.object({
  vm: z.string().min(1),
  /** Default: a generated name. */
  name: sessionNameSchema.optional(),
  argv: z.array(z.string()).min(1),
  /** Run under a terminal (stdout and stderr merge). */
  tty: z.boolean().optional(),
  /** The terminal's size at the start (default 80x24); an attached client's `session/resize` changes it. */
  size: z.object({ rows: z.number().int().positive().max(10_000), cols: z.number().int().positive().max(10_000) }).optional(),
  cwd: z.string().optional(),
  env: z.record(z.string()).optional(),
  /** Per-stream cap on the output kept on the guest's work disk (default 64 MiB); later output is dropped. */
  maxOutputBytes: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
});
export type SessionStartParams = z.infer<typeof sessionStartParamsSchema>;

export const sessionAttachParamsSchema = sessionRef.extend({
  /** Client-chosen id that ties session/output and session/stdin notifications to this request. */
  streamId: z.string().min(1),
  from: fromSchema.optional(),
  /** Shown to a second client that tries to attach. */
  client: z.string().max(200).optional(),
});

export const sessionLogsParamsSchema = sessionRef.extend({
  streamId: z.string().min(1),
  from: fromSchema.optional(),
  stream: z.enum(OUTPUT_STREAMS).optional(),
  /** Keep streaming new output until the session ends (or the request is cancelled). */
  follow: z.boolean().optional(),
});

export const sessionSendParamsSchema = sessionRef.extend({
  /** One send may span several requests (a large send streams): same sendId, `final` on the last. */
  sendId: z.string().min(1),
  /** Base64 bytes, at most 1 MiB per request. */
  data: z.string().max(1024 * 1024 * 2),
  final: z.boolean(),
});

/** How long `session.stop` waits, by default, for a session to end after its signal before it sends SIGKILL. */
export const SESSION_STOP_TIMEOUT_SECONDS = 10;

export const sessionStopParamsSchema = sessionRef.extend({
  /** The first signal (default SIGTERM). */
  signal: z.string().regex(/^SIG[A-Z0-9]+$/).optional(),
  /**
   * Seconds to wait for the session to end after `signal` before SIGKILL (default SESSION_STOP_TIMEOUT_SECONDS;
   * 0: SIGKILL at once if it is still running).
   */
  timeoutSeconds: z.number().int().min(0).max(3600).optional(),
  /** false: send the signal and return at once (the session may still be running); no SIGKILL. */
  wait: z.boolean().optional(),
});
export type SessionStopParams = z.infer<typeof sessionStopParamsSchema>;
/** The session as `stop` left it, and the signals this stop sent (none for a session that had already ended). */
export const sessionStopResultSchema = sessionInfoSchema.extend({ sent: z.array(z.string()) });
export type SessionStopResult = z.infer<typeof sessionStopResultSchema>;

/** Daemon -> client: bytes of a session's output at `offset` of its stream. `data` is base64. */
export const sessionOutputSchema = z.object({
  streamId: z.string(),
  stream: z.enum(OUTPUT_STREAMS),
  offset: z.number(),
  data: z.string(),
});
/** Client -> daemon: stdin for an attached session; `eof` closes its stdin. */
export const sessionStdinSchema = z.object({ streamId: z.string(), data: z.string().optional(), eof: z.boolean().optional() });

/** The attached client's terminal changed size: a tty session's terminal follows (its process gets SIGWINCH). */
export const sessionResizeSchema = z.object({
  streamId: z.string(),
  rows: z.number().int().positive().max(10_000),
  cols: z.number().int().positive().max(10_000),
});

export const sessionEndSchema = z.object({
  /** Where each stream's reading stopped: resume from here. */
  stdoutOffset: z.number(),
  stderrOffset: z.number(),
  session: sessionInfoSchema,
});

export const statsSchema = z.object({
  name: z.string(),
  /** CPU busy % of the whole guest since the previous sample (100 = one vCPU fully busy, times vcpus at most). */
  cpuPercent: z.number(),
  vcpus: z.number(),
  memory: z.object({ totalBytes: z.number(), usedBytes: z.number(), availableBytes: z.number() }),
  load: z.tuple([z.number(), z.number(), z.number()]),
  disks: z.array(z.object({ mount: z.string(), usedBytes: z.number(), freeBytes: z.number(), totalBytes: z.number() })),
  network: z.object({ rxBytes: z.number(), txBytes: z.number() }),
  uptimeSeconds: z.number(),
  sessions: z.object({ running: z.number(), total: z.number() }),
});
export type VmStats = z.infer<typeof statsSchema>;

export const SessionMethods = {
  start: method('session.start', sessionStartParamsSchema, sessionInfoSchema),
  list: method('session.list', z.object({ vm: z.string().min(1) }), z.array(sessionInfoSchema)),
  show: method('session.show', sessionRef, sessionInfoSchema),
  attach: method('session.attach', sessionAttachParamsSchema, sessionEndSchema),
  logs: method('session.logs', sessionLogsParamsSchema, sessionEndSchema),
  send: method('session.send', sessionSendParamsSchema, z.object({ bytes: z.number() })),
  stop: method('session.stop', sessionStopParamsSchema, sessionStopResultSchema),
  rm: method('session.rm', sessionRef, z.object({ removed: z.string() })),
} as const;

export const SessionNotifications = {
  output: new RpcNotification('session/output', sessionOutputSchema),
  stdin: new RpcNotification('session/stdin', sessionStdinSchema),
  resize: new RpcNotification('session/resize', sessionResizeSchema),
} as const;

export const StatsMethods = {
  /** One VM's stats, from its guest agent. */
  vm: method('vm.stats', z.object({ name: z.string().min(1) }), statsSchema),
} as const;
