import { z } from 'zod';
import { AGENT_SIGNALS, byteCount, channelId, requestId, text, windowSize } from './agent-fields.js';

/**
 * The session messages of the agent protocol (the wire and the other messages are in `agent.ts`, which
 * puts these into its message unions). A session is a process the agent keeps under a name, independent of
 * any connection: see `src/agent/sessions.ts`. The requests map one to one onto the daemon's `session.*` RPC
 * methods (`src/protocol/session.ts`); their output comes as data frames on a channel, ended by a
 * `sessionEnd` event.
 */

// ---- daemon -> agent ------------------------------------------------------------------------------------

/** The same rule as `SESSION_NAME_RE` in `session.ts` (a unit test keeps them equal). */
export const AGENT_SESSION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const sessionName = z
  .string()
  .regex(AGENT_SESSION_NAME_RE, 'a session name is 1-64 letters, digits, ., _ or -, starting with a letter or digit');
export const AGENT_OUTPUT_STREAMS = ['stdout', 'stderr'] as const;
export type AgentOutputStream = (typeof AGENT_OUTPUT_STREAMS)[number];
/** Where reading starts: the first byte, the current end, or a byte offset into the stream's file. */
const readFrom = z.union([z.literal('start'), z.literal('end'), byteCount]);

/** Starts a session; the reply (its info) comes once the process exists. No name: the agent picks `sN`. */
export const sessionStartRequestSchema = z.object({
  type: z.literal('sessionStart'),
  id: requestId,
  name: sessionName.optional(),
  argv: z
    .array(text(1 << 16))
    .min(1)
    .max(4096),
  /** Run under a terminal (of `size`, default 80x24); its output is then all on stdout. */
  tty: z.boolean().optional(),
  size: windowSize.optional(),
  cwd: text(4096).optional(),
  /** Added to (and overriding) the agent's own environment; never written to disk. */
  env: z.record(text(1 << 16)).optional(),
  /** Per-stream cap on kept output; default: the agent's (`--session-cap`). */
  capBytes: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
  /**
   * Run under `mise exec --` when mise's config applies in `cwd` (as an exec with `mise`, agent/mise.ts): a session
   * in a workspace gets the repository's tools, as `vm exec` does. The session still shows `argv`.
   */
  mise: z.boolean().optional(),
});
export const sessionListRequestSchema = z.object({ type: z.literal('sessionList'), id: requestId });
export const sessionShowRequestSchema = z.object({ type: z.literal('sessionShow'), id: requestId, name: sessionName });
/**
 * Attaches to a session on `channel`, exclusively: its stdout and stderr from `from` (default `end`) come as
 * data frames, followed as the process writes; stdin frames go to its stdin, each frame delivered whole (an
 * empty one closes the session's stdin); `resize` on the channel resizes a tty session. Ends with a
 * `sessionEnd` event once the session has exited and all its output was sent, or after `sessionDetach`.
 */
export const sessionAttachRequestSchema = z.object({
  type: z.literal('sessionAttach'),
  id: requestId,
  channel: channelId,
  name: sessionName,
  from: readFrom.optional(),
  /** Who is attaching, shown to anyone else who tries while this attach holds the session. */
  client: text(200).optional(),
});
/** Reads one output stream (default stdout) from `from` (default `start`) as data frames; `sessionEnd` ends it. */
export const sessionLogsRequestSchema = z.object({
  type: z.literal('sessionLogs'),
  id: requestId,
  channel: channelId,
  name: sessionName,
  from: readFrom.optional(),
  stream: z.enum(AGENT_OUTPUT_STREAMS).optional(),
  /** Keep reading new output until the session ends; otherwise stop at the end of what is written. */
  follow: z.boolean().optional(),
});
/**
 * One send: the bytes follow as stdin frames on `channel`, ended by an empty one, and reach the session's
 * stdin whole (concurrent sends queue; none interleaves inside another). The reply comes once every byte is
 * in the process's stdin pipe; a `sessionDetach` on the channel abandons the rest of the send.
 */
export const sessionSendRequestSchema = z.object({
  type: z.literal('sessionSend'),
  id: requestId,
  channel: channelId,
  name: sessionName,
  /** Close the session's stdin after this send. */
  closeStdin: z.boolean().optional(),
});
/** Sends `signal` (default SIGTERM) to the session's process group; a session that has ended is left alone. */
export const sessionStopRequestSchema = z.object({
  type: z.literal('sessionStop'),
  id: requestId,
  name: sessionName,
  signal: z.enum(AGENT_SIGNALS).optional(),
});
/** Removes an ended session and its output; refused while it runs. */
export const sessionRmRequestSchema = z.object({ type: z.literal('sessionRm'), id: requestId, name: sessionName });
/** Ends an attach or logs channel early (the session keeps running), or abandons a send. No reply. */
export const sessionDetachMessageSchema = z.object({ type: z.literal('sessionDetach'), channel: channelId });

/** The session requests and messages, members of `hostMessageSchema` (agent.ts). */
export const sessionMessageSchemas = [
  sessionStartRequestSchema,
  sessionListRequestSchema,
  sessionShowRequestSchema,
  sessionAttachRequestSchema,
  sessionLogsRequestSchema,
  sessionSendRequestSchema,
  sessionStopRequestSchema,
  sessionRmRequestSchema,
  sessionDetachMessageSchema,
] as const;
export type SessionStartRequest = z.infer<typeof sessionStartRequestSchema>;
export type SessionAttachRequest = z.infer<typeof sessionAttachRequestSchema>;
export type SessionLogsRequest = z.infer<typeof sessionLogsRequestSchema>;
export type SessionSendRequest = z.infer<typeof sessionSendRequestSchema>;
/** The session message types that get a reply. */
export type SessionRequestType =
  | 'sessionStart'
  | 'sessionList'
  | 'sessionShow'
  | 'sessionAttach'
  | 'sessionLogs'
  | 'sessionSend'
  | 'sessionStop'
  | 'sessionRm';

// ---- agent -> daemon ------------------------------------------------------------------------------------

/** The same fields as `sessionInfoSchema` in `session.ts`, so the daemon passes it on as it is. */
export const agentSessionInfoSchema = z.object({
  name: sessionName,
  /** The session's process while it runs. */
  pid: z.number().int().nullable(),
  /** running; exited (exitCode or signal); ended: its end was not seen (the guest stopped under it). */
  state: z.enum(['running', 'exited', 'ended']),
  exitCode: z.number().int().nullable(),
  signal: text(16).nullable(),
  argv: z.array(text(1 << 16)).max(4096),
  tty: z.boolean(),
  cwd: text(4096).nullable(),
  startedAt: text(64),
  endedAt: text(64).nullable(),
  /** Bytes kept so far of each stream: the offset the next byte gets. */
  stdoutBytes: byteCount,
  stderrBytes: byteCount,
  capBytes: byteCount,
  /** Output was dropped because a stream reached `capBytes`. */
  capped: z.boolean(),
  attachedBy: text(200).nullable(),
});
export type AgentSessionInfo = z.infer<typeof agentSessionInfoSchema>;
/** Where an attach or logs starts reading each stream (the offset of the first byte it sends). */
export const sessionStreamResultSchema = z.object({
  stdoutOffset: byteCount,
  stderrOffset: byteCount,
  session: agentSessionInfoSchema,
});
export type SessionStreamResult = z.infer<typeof sessionStreamResultSchema>;
/** Sessions an agent keeps at most (so a list fits one frame: argv is capped at 16 KiB per session). */
export const AGENT_MAX_SESSIONS = 128;
/** The result schema of each session request type; part of `AGENT_RESULT_SCHEMAS` (agent.ts). */
export const SESSION_RESULT_SCHEMAS = {
  sessionStart: agentSessionInfoSchema,
  sessionList: z.array(agentSessionInfoSchema).max(AGENT_MAX_SESSIONS),
  sessionShow: agentSessionInfoSchema,
  sessionAttach: sessionStreamResultSchema,
  sessionLogs: sessionStreamResultSchema,
  sessionSend: z.object({ bytes: byteCount }),
  sessionStop: agentSessionInfoSchema,
  sessionRm: z.object({ removed: sessionName }),
} as const satisfies Record<SessionRequestType, z.ZodTypeAny>;

/**
 * An attach or logs channel ended, after its last data frame: `reason` says why. The offsets are where reading
 * stopped (resume from them); a stream a logs channel did not read reports 0.
 */
export const sessionEndEventSchema = z.object({
  type: z.literal('sessionEnd'),
  channel: channelId,
  reason: z.enum(['exited', 'detached', 'caughtUp']),
  stdoutOffset: byteCount,
  stderrOffset: byteCount,
  session: agentSessionInfoSchema,
});
export type SessionEndEvent = z.infer<typeof sessionEndEventSchema>;
