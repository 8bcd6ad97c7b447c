import { z } from 'zod';
import { AGENT_SIGNALS, byteCount, channelId, requestId, text, windowSize } from './agent-fields.js';
import { SESSION_RESULT_SCHEMAS, sessionEndEventSchema, sessionMessageSchemas, type SessionRequestType } from './agent-sessions.js';

/**
 * The one protocol between the daemon and `banger-agent`, the process in every guest. Both ends import these
 * declarations; the byte-level framing lives in `agent-frames.ts`, the credit flow control in `agent-flow.ts`, the
 * session messages in `agent-sessions.ts` and the pieces messages are built from (ids, byte counts, signals) in
 * `agent-fields.ts`.
 *
 * Wire: each side first sends {@link AGENT_SYNC}, then frames of `u32 payload length | u8 kind | u32 channel |
 * payload` (big-endian). Control frames (kind 0) carry one JSON message validated against the schemas below on
 * receipt; data frames carry raw bytes of one stream of one channel; credit frames grant the peer more bytes on
 * one stream. Requests carry an `id` and get exactly one `reply` with that id; `exit` is an event. The daemon
 * starts its ids at random on each connection, so a reply to an earlier daemon's request is never taken for one
 * of its own.
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

const prespawnKey = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/);

/** What the type byte of a frame says its payload is. A data frame with an empty payload ends its stream. */
export const FrameKind = { Control: 0, Stdin: 1, Stdout: 2, Stderr: 3, Credit: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
export type StreamKind = typeof FrameKind.Stdin | typeof FrameKind.Stdout | typeof FrameKind.Stderr;
export const FRAME_HEADER_BYTES = 9;

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
export const AGENT_FEATURES = ['exec', 'pty', 'stats', 'writeFile', 'setClock', 'sessions', 'ports', 'prespawn', 'mise'] as const;
export type AgentFeature = (typeof AGENT_FEATURES)[number];

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
    /** The process held under this key (see `prespawn`); NotFound when none is, or it has ended. */
    z.object({ prespawned: prespawnKey }),
  ]),
  /** Added to (and overriding) the agent's own environment. */
  env: z.record(text(1 << 20)).optional(),
  cwd: text(4096).optional(),
  stdin: z.boolean(),
  pty: windowSize.optional(),
  /** With argv: run it as `mise exec -- ARGV` when mise is on PATH and its config may apply in cwd (protocol/mise.ts). */
  mise: z.boolean().optional(),
});

/**
 * Starts `argv` and holds it, for a later `exec` of `{ prespawned: key }` on any connection to take (one held
 * per key: a new one replaces it). Its stdin, stdout and stderr wait until then. The reply (`{pid}`) comes
 * once it has written something (its sign that it is ready), has ended, or after 10 s.
 */
export const prespawnRequestSchema = z.object({
  type: z.literal('prespawn'),
  id: requestId,
  key: prespawnKey,
  argv: z
    .array(text(1 << 20))
    .min(1)
    .max(65536),
  cwd: text(4096).optional(),
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

export const hostMessageSchema = z.discriminatedUnion('type', [
  helloRequestSchema,
  execRequestSchema,
  prespawnRequestSchema,
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
  | 'prespawn'
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

/** The result schema of each request type; the daemon validates a reply's `result` with it. */
export const AGENT_RESULT_SCHEMAS = {
  hello: helloResultSchema,
  exec: execResultSchema,
  prespawn: execResultSchema,
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
