import { z } from 'zod';

/**
 * The one protocol between the daemon and `banger-agent`, the process in every guest. Both ends import these
 * declarations; the byte-level framing and flow control live in `agent-frames.ts`.
 *
 * Wire: each side first sends {@link AGENT_SYNC}, then frames of `u32 payload length | u8 kind | u32 channel |
 * payload` (big-endian). Control frames (kind 0) carry one JSON message validated against the schemas below on
 * receipt; data frames carry raw bytes of one stream of one channel; credit frames grant the peer more bytes on
 * one stream. Requests carry an `id` and get exactly one `reply` with that id; `exit` is an event.
 */

/** Bumped on any incompatible change; `hello` refuses a peer speaking another version. */
export const AGENT_PROTOCOL_VERSION = 1;
/** Largest frame payload either side accepts; checked from the header, before the body is buffered. */
export const AGENT_MAX_FRAME = 4 * 1024 * 1024;
/** Largest data frame a sender makes; keeps one stream from hogging the link. */
export const AGENT_DATA_CHUNK = 64 * 1024;
/** Bytes a sender may have in flight on one stream before the receiver grants more (credit flow control). */
export const AGENT_STREAM_WINDOW = 256 * 1024;
/**
 * Sent by each side before its first frame; a receiver skips anything before it (at most
 * {@link AGENT_MAX_SYNC_SKIP} bytes). Over virtio-serial the guest end of the port outlives the host's
 * connection, so bytes of an earlier connection can sit in front of a new one.
 *
 * The daemon sends it again, at a frame boundary, to start over on a connection the agent still holds (a new
 * daemon, or a guest resumed from a snapshot, meets the agent in the middle of its old connection): its first
 * four bytes read as a length over any cap, so it can never be a frame header. The agent ends what the old
 * connection had open (as if it had closed), answers with its own AGENT_SYNC and serves the new one.
 */
export const AGENT_SYNC: Uint8Array = Uint8Array.from([0xb4, 0x42, 0x41, 0x4e, 0x47, 0x45, 0x52, 0x01]);
export const AGENT_MAX_SYNC_SKIP = 1024 * 1024;
/** The guest end of the virtio-serial port QEMU exposes as `banger.0`. */
export const AGENT_VIRTIO_PORT = '/dev/virtio-ports/banger.0';
/**
 * The vsock port the agent accepts on in a Firecracker guest; the daemon reaches it by writing
 * `CONNECT 1024` to the VM's vsock socket (`guest/vsock.ts`). Outside the reserved range (0-1023), so
 * binding it needs no capability in the guest.
 */
export const AGENT_VSOCK_PORT = 1024;

/** What the type byte of a frame says its payload is. A data frame with an empty payload ends its stream. */
export const FrameKind = { Control: 0, Stdin: 1, Stdout: 2, Stderr: 3, Credit: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
export type StreamKind = typeof FrameKind.Stdin | typeof FrameKind.Stdout | typeof FrameKind.Stderr;
export const FRAME_HEADER_BYTES = 9;

/** Signals the daemon may forward to a guest process. */
export const AGENT_SIGNALS = [
  'SIGTERM',
  'SIGKILL',
  'SIGINT',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGCONT',
  'SIGSTOP',
] as const;
export type AgentSignal = (typeof AGENT_SIGNALS)[number];

/** Error codes an agent reply may carry; a subset of banger's own codes, spelled the same. */
export const AGENT_ERROR_CODES = [
  'InvalidArgument',
  'NotFound',
  'AlreadyExists',
  'FailedPrecondition',
  'Conflict',
  'ResourceExhausted',
  'Unimplemented',
  'Internal',
] as const;
export type AgentErrorCode = (typeof AGENT_ERROR_CODES)[number];

/** What an agent can do; the daemon asks for a feature, never for an agent version. */
export const AGENT_FEATURES = ['exec', 'pty', 'stats', 'writeFile', 'setClock', 'sessions', 'ports'] as const;
export type AgentFeature = (typeof AGENT_FEATURES)[number];

const requestId = z.number().int().min(0).max(0x7fffffff);
/** Chosen by the daemon, unique among the connection's open channels. */
const channelId = z.number().int().min(1).max(0xffffffff);
const byteCount = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const windowSize = z.object({ cols: z.number().int().min(1).max(65535), rows: z.number().int().min(1).max(65535) });
const text = (max: number) => z.string().max(max);

// ---- daemon -> agent ------------------------------------------------------------------------------------

export const helloRequestSchema = z.object({ type: z.literal('hello'), id: requestId, protocol: z.number().int() });

/**
 * Starts a process on `channel`. Its stdout and stderr come back as data frames on that channel (one stream
 * when `pty` is set: a terminal merges them), stdin goes the other way when `stdin` is true, and an `exit`
 * event follows both streams' ends. The reply (`{pid}`) comes once the process exists.
 */
export const execRequestSchema = z.object({
  type: z.literal('exec'),
  id: requestId,
  channel: channelId,
  command: z.union([
    z.object({
      argv: z
        .array(text(1 << 20))
        .min(1)
        .max(65536),
    }),
    /** Run by `/bin/sh -c`. */
    z.object({ shell: text(1 << 20) }),
  ]),
  /** Added to (and overriding) the agent's own environment. */
  env: z.record(text(1 << 20)).optional(),
  cwd: text(4096).optional(),
  stdin: z.boolean(),
  pty: windowSize.optional(),
});

/** Forwards a signal to the process group of the channel's process. No reply. */
export const signalMessageSchema = z.object({
  type: z.literal('signal'),
  channel: channelId,
  signal: z.enum(AGENT_SIGNALS),
});

/** Changes the terminal size of a `pty` exec. No reply. */
export const resizeMessageSchema = windowSize.extend({ type: z.literal('resize'), channel: channelId });

export const statsRequestSchema = z.object({ type: z.literal('stats'), id: requestId });

/**
 * Writes a file atomically (temporary file in the same directory, fsync, rename) with `mode`. The content
 * follows as stdin data frames on `channel`, ended by an empty one; the reply comes after the rename.
 */
export const writeFileRequestSchema = z.object({
  type: z.literal('writeFile'),
  id: requestId,
  channel: channelId,
  path: text(4096).refine((p) => p.startsWith('/'), 'path must be absolute'),
  mode: z.number().int().min(0).max(0o7777),
});

/** Sets the guest's wall clock. */
export const setClockRequestSchema = z.object({
  type: z.literal('setClock'),
  id: requestId,
  epochMs: z.number().int().min(0),
});

/**
 * Subscribes the connection to the guest's listening TCP sockets: the reply is the current list, then a
 * `ports` event follows each time the list changes (the agent reads /proc/net/tcp{,6} about once a second).
 * A second request on the same connection answers with the current list and keeps the one subscription.
 * The subscription ends with the connection.
 */
export const watchPortsRequestSchema = z.object({ type: z.literal('watchPorts'), id: requestId });

// ---- sessions (daemon -> agent) -------------------------------------------------------------------------
// A session is a process the agent keeps under a name, independent of any connection: see `src/agent/sessions.ts`.
// These requests map one to one onto the daemon's `session.*` RPC methods (`src/protocol/session.ts`).

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

const sessionMessageSchemas = [
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
type SessionRequestType =
  | 'sessionStart'
  | 'sessionList'
  | 'sessionShow'
  | 'sessionAttach'
  | 'sessionLogs'
  | 'sessionSend'
  | 'sessionStop'
  | 'sessionRm';

export const hostMessageSchema = z.discriminatedUnion('type', [
  helloRequestSchema,
  execRequestSchema,
  signalMessageSchema,
  resizeMessageSchema,
  statsRequestSchema,
  writeFileRequestSchema,
  setClockRequestSchema,
  watchPortsRequestSchema,
  ...sessionMessageSchemas,
]);
export type HostMessage = z.infer<typeof hostMessageSchema>;
export type HelloRequest = z.infer<typeof helloRequestSchema>;
export type ExecRequest = z.infer<typeof execRequestSchema>;
export type WriteFileRequest = z.infer<typeof writeFileRequestSchema>;
/** The message types that get a reply. */
export type AgentRequestType =
  | 'hello'
  | 'exec'
  | 'stats'
  | 'writeFile'
  | 'setClock'
  | 'watchPorts'
  | SessionRequestType;

// ---- agent -> daemon ------------------------------------------------------------------------------------

export const helloResultSchema = z.object({
  protocol: z.number().int(),
  agentVersion: text(64),
  pid: z.number().int(),
  node: text(64),
  features: z.array(text(32)).max(64),
});
export type HelloResult = z.infer<typeof helloResultSchema>;

export const execResultSchema = z.object({ pid: z.number().int().min(1) });
export type ExecResult = z.infer<typeof execResultSchema>;

const diskStatsSchema = z.object({
  path: text(4096),
  totalBytes: byteCount,
  usedBytes: byteCount,
  freeBytes: byteCount,
});
export const statsResultSchema = z.object({
  uptimeSec: z.number().min(0),
  /** Busy share of all CPUs since the previous `stats` (or over a short sample), 0..100. */
  cpu: z.object({ percent: z.number().min(0).max(100), cores: z.number().int().min(1) }),
  load: z.tuple([z.number(), z.number(), z.number()]),
  memory: z.object({ totalBytes: byteCount, usedBytes: byteCount, availableBytes: byteCount }),
  /** `/` and `/root`, where they exist. */
  disks: z.array(diskStatsSchema).max(8),
  /** Summed over every interface but `lo`. */
  network: z.object({ rxBytes: byteCount, txBytes: byteCount }),
  /** The agent's own footprint: its memory must stay bounded whatever the daemon does. */
  agent: z.object({ pid: z.number().int(), rssBytes: byteCount, arrayBuffersBytes: byteCount }),
});
export type StatsResult = z.infer<typeof statsResultSchema>;

export const writeFileResultSchema = z.object({ bytes: byteCount });
export type WriteFileResult = z.infer<typeof writeFileResultSchema>;
export const setClockResultSchema = z.object({ epochMs: z.number().int() });
export type SetClockResult = z.infer<typeof setClockResultSchema>;

/** Entries a port list carries at most; an agent that sees more sends the first ones (by port) and says so. */
export const AGENT_MAX_PORTS = 1024;
/** One listening TCP socket: its port and the address it is bound to (`0.0.0.0`, `::`, `10.0.2.15`, `::1`...). */
export const listeningPortSchema = z.object({
  port: z.number().int().min(1).max(65535),
  address: z
    .string()
    .max(45)
    .regex(/^[0-9a-f.:]+$/, 'an address is an IPv4 or IPv6 address in lowercase text'),
});
export type ListeningPort = z.infer<typeof listeningPortSchema>;
/** The guest's listening TCP sockets, sorted by port then address; `truncated`: there were more than the cap. */
export const portListSchema = z.object({
  ports: z.array(listeningPortSchema).max(AGENT_MAX_PORTS),
  truncated: z.boolean(),
});
export type AgentPortList = z.infer<typeof portListSchema>;

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
const SESSION_RESULT_SCHEMAS = {
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

/** The result schema of each request type; the daemon validates a reply's `result` with it. */
export const AGENT_RESULT_SCHEMAS = {
  hello: helloResultSchema,
  exec: execResultSchema,
  stats: statsResultSchema,
  writeFile: writeFileResultSchema,
  setClock: setClockResultSchema,
  watchPorts: portListSchema,
  ...SESSION_RESULT_SCHEMAS,
} as const satisfies Record<AgentRequestType, z.ZodTypeAny>;

export const replySchema = z.discriminatedUnion('ok', [
  z.object({ type: z.literal('reply'), id: requestId, ok: z.literal(true), result: z.unknown() }),
  z.object({
    type: z.literal('reply'),
    id: requestId,
    ok: z.literal(false),
    error: z.object({ code: z.enum(AGENT_ERROR_CODES), message: text(4096) }),
  }),
]);

/** A channel's process ended: `code` for a normal exit, `signal` for a kill. Sent after its streams' ends. */
export const exitEventSchema = z.object({
  type: z.literal('exit'),
  channel: channelId,
  code: z.number().int().min(0).max(255).nullable(),
  signal: text(16).nullable(),
});
export type ExitEvent = z.infer<typeof exitEventSchema>;

/** The listening sockets changed (after a `watchPorts`): the whole new list. */
export const portsEventSchema = portListSchema.extend({ type: z.literal('ports') });
export type PortsEvent = z.infer<typeof portsEventSchema>;

export const agentMessageSchema = z.union([replySchema, exitEventSchema, sessionEndEventSchema, portsEventSchema]);
export type AgentMessage = z.infer<typeof agentMessageSchema>;
export type AgentReply = z.infer<typeof replySchema>;
