import { randomInt } from 'node:crypto';
import type { Duplex, Readable } from 'node:stream';
import { BangerError, ErrorCode, type ErrorCode as Code } from '../../errors/index.js';
import { FrameConnection, FrameError } from '../../protocol/agent-frames.js';
import { ExecChannel, type AgentProcess } from './agent-process.js';
import {
  AgentChannels,
  type AgentSessionAttachment,
  type AgentSessionStream,
  type AgentSessionStreamOptions,
} from './agent-channels.js';

import type { AgentClientOptions, AgentExecOptions, AgentSessionStartOptions, RequestOptions } from './agent-options.js';
import {
  AGENT_PROTOCOL_VERSION,
  AGENT_RESULT_SCHEMAS,
  agentMessageSchema,
  type AgentErrorCode,
  type AgentPortList,
  type AgentRequestType,
  type ExecResult,
  type HelloResult,
  type SetClockResult,
  type StatsResult,
  type WriteFileResult,
} from '../../protocol/agent.js';
import type { AgentSignal } from '../../protocol/agent-fields.js';
import type { AgentOutputStream, AgentSessionInfo } from '../../protocol/agent-sessions.js';
import { escapeForTerminal } from '../../shared/terminal-text.js';

export type { AgentExitStatus, AgentProcess, AgentSessionEnd, SessionOutputChunk, SessionOutputHandler } from './agent-process.js';
export type { AgentClientOptions, AgentExecOptions, AgentSessionStartOptions, RequestOptions } from './agent-options.js';

/**
 * The daemon's end of the guest agent protocol, over any Duplex (the VM's virtio-serial unix socket, a
 * Firecracker vsock, a socket pair in tests). The agent is untrusted: every message is validated, frames are
 * capped, output is taken only within the credit granted (so a flooding guest waits instead of filling the
 * daemon's memory), every request has a deadline, and a misbehaving agent loses its connection: every
 * pending request and running process of that VM fails with Unavailable, and nothing else is affected.
 * Channels other than a request's reply are agent-channels.ts (uploads, session streams) and
 * agent-process.ts (exec).
 */

interface Pending {
  type: AgentRequestType;
  resolve(result: unknown): void;
  reject(error: BangerError): void;
  timer?: NodeJS.Timeout;
  cleanup(): void;
}

const DEFAULT_TIMEOUT_MS = 15_000;

export class AgentClient {
  private readonly conn: FrameConnection;
  private readonly pending = new Map<number, Pending>();
  private readonly channels: AgentChannels;
  /**
   * Random per connection, not 1: the guest end of the agent's port outlives the host's connection, so a new
   * daemon can be handed what the agent was writing to the one before (its greeting and the reply to its
   * hello, in a write that blocked when that daemon died and completed when this one connected). Taking that
   * reply for this connection's hello left the agent waiting for a greeting this daemon had already sent
   * (lost with the port the agent was closing) while the daemon thought it connected. A reply whose id this
   * connection never used is ignored.
   */
  private nextId = randomInt(1, 0x7fffffff);
  private closeError: BangerError | null = null;
  private readonly label: string;
  private portsListener: ((list: AgentPortList) => void) | null = null;
  private readonly closeListeners = new Set<(error: BangerError) => void>();

  constructor(
    stream: Duplex,
    private readonly opts: AgentClientOptions = {},
  ) {
    this.label = opts.label ? ` of VM ${opts.label}` : '';
    this.conn = new FrameConnection(
      stream,
      {
        control: (m) => this.onControl(m),
        data: (channel, stream, payload) => this.channels.data(channel, stream, payload),
        credit: (channel, stream, bytes) => this.channels.credit(channel, stream, bytes),
        closed: (error) => this.onClosed(error),
      },
      { greetFirst: true },
    );
    this.channels = new AgentChannels(this.conn, (type, body, o, deferTimeout) =>
      this.request(type, body, o, deferTimeout),
    );
  }

  /** True once the connection has ended; every later call fails with Unavailable. */
  get closed(): boolean {
    return this.conn.closed;
  }

  /** Requests waiting for a reply (for tests and diagnostics). */
  get pendingRequests(): number {
    return this.pending.size;
  }

  /** Checks that the agent speaks this protocol version; returns what it says about itself. */
  async hello(opts: RequestOptions = {}): Promise<HelloResult> {
    const r = (await this.request('hello', { protocol: AGENT_PROTOCOL_VERSION }, opts)) as HelloResult;
    if (r.protocol !== AGENT_PROTOCOL_VERSION)
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `the guest agent${this.label} speaks protocol ${r.protocol}, this banger speaks ${AGENT_PROTOCOL_VERSION}`,
        { hint: 'rebuild the image with `banger image build` so its agent matches this banger' },
      );
    return r;
  }

  async stats(opts: RequestOptions = {}): Promise<StatsResult> {
    return (await this.request('stats', {}, opts)) as StatsResult;
  }

  async setClock(epochMs: number, opts: RequestOptions = {}): Promise<SetClockResult> {
    return (await this.request('setClock', { epochMs: Math.round(epochMs) }, opts)) as SetClockResult;
  }

  /**
   * Watches the guest's listening TCP sockets: resolves with the current list, then `onChange` gets the whole
   * new list each time it changes, until the connection ends or `signal` (if given) aborts. One watch per
   * connection: a second call replaces the first one's `onChange`.
   */
  async watchPorts(
    onChange: (list: AgentPortList) => void,
    opts: RequestOptions = {},
  ): Promise<AgentPortList> {
    this.portsListener = onChange;
    opts.signal?.addEventListener(
      'abort',
      () => {
        if (this.portsListener === onChange) this.portsListener = null;
      },
      { once: true },
    );
    try {
      return (await this.request('watchPorts', {}, opts)) as AgentPortList;
    } catch (e) {
      if (this.portsListener === onChange) this.portsListener = null;
      throw e;
    }
  }

  /** Calls `cb` once when the connection ends (at once if it has), with the error later calls fail with. */
  onClose(cb: (error: BangerError) => void): () => void {
    if (this.closeError) {
      cb(this.closeError);
      return () => {};
    }
    this.closeListeners.add(cb);
    return () => this.closeListeners.delete(cb);
  }

  /** Starts a process; resolves once it runs in the guest. */
  async exec(o: AgentExecOptions): Promise<AgentProcess> {
    if ([o.argv, o.shell, o.prespawned].filter((x) => x !== undefined).length !== 1)
      throw new BangerError(ErrorCode.InvalidArgument, 'exec needs exactly one of argv, shell and prespawned');
    const channel = this.channels.alloc();
    const proc = new ExecChannel(channel, this.conn, o.stdin === true);
    this.channels.set(channel, proc);
    const command = o.argv !== undefined ? { argv: o.argv } : o.shell !== undefined ? { shell: o.shell } : { prespawned: o.prespawned };
    try {
      const r = (await this.request(
        'exec',
        { channel, command, env: o.env, cwd: o.cwd, stdin: o.stdin === true, pty: o.pty, mise: o.mise || undefined },
        o,
      )) as ExecResult;
      return proc.handle(r.pid);
    } catch (e) {
      this.channels.delete(channel);
      proc.fail(e as BangerError);
      throw e;
    }
  }

  /** Starts `argv` held under `key` for a later exec of `{ prespawned: key }` on any connection (protocol/agent.ts). */
  async prespawn(key: string, argv: string[], opts: RequestOptions = {}): Promise<{ pid: number }> {
    return (await this.request('prespawn', { key, argv }, opts)) as ExecResult;
  }

  /** Writes `data` to `path` in the guest with `mode`, atomically (temporary file + rename). */
  async writeFile(
    path: string,
    data: Buffer | Readable,
    mode: number,
    opts: RequestOptions = {},
  ): Promise<WriteFileResult> {
    const up = this.channels.upload();
    let arm = (): void => {};
    const reply = up.settleWith(this.request('writeFile', { channel: up.channel, path, mode }, opts, (a) => (arm = a)));
    const abandoned = await up.pump(data);
    if (abandoned && !Buffer.isBuffer(data)) (data as Readable).destroy();
    arm();
    return (await reply) as WriteFileResult;
  }

  /** Starts a session; resolves with its info once its process exists. It outlives this connection. */
  async sessionStart(o: AgentSessionStartOptions): Promise<AgentSessionInfo> {
    const { signal: _s, timeoutMs: _t, ...body } = o;
    return (await this.request('sessionStart', body, o)) as AgentSessionInfo;
  }

  async sessionList(opts: RequestOptions = {}): Promise<AgentSessionInfo[]> {
    return (await this.request('sessionList', {}, opts)) as AgentSessionInfo[];
  }

  async sessionShow(name: string, opts: RequestOptions = {}): Promise<AgentSessionInfo> {
    return (await this.request('sessionShow', { name }, opts)) as AgentSessionInfo;
  }

  /** Signals the session's process group (default SIGTERM); returns the session as it is right after. */
  async sessionStop(name: string, signal?: AgentSignal, opts: RequestOptions = {}): Promise<AgentSessionInfo> {
    return (await this.request('sessionStop', { name, signal }, opts)) as AgentSessionInfo;
  }

  async sessionRm(name: string, opts: RequestOptions = {}): Promise<{ removed: string }> {
    return (await this.request('sessionRm', { name }, opts)) as { removed: string };
  }

  /** Reads one stream (default stdout) from `from` (default start); `follow` keeps reading until it ends. */
  sessionLogs(
    o: AgentSessionStreamOptions & { stream?: AgentOutputStream; follow?: boolean },
  ): Promise<AgentSessionStream> {
    return this.channels.openSessionStream('sessionLogs', { stream: o.stream, follow: o.follow }, o);
  }

  /**
   * Attaches exclusively (a second attach fails with Conflict naming `client`), from `from` (default end).
   * The stream ends once the session has ended and all its output was handled, or on detach.
   */
  sessionAttach(o: AgentSessionStreamOptions & { client?: string }): Promise<AgentSessionAttachment> {
    return this.channels.attachSession(o);
  }

  /**
   * One send to a session's stdin, delivered whole (other sends wait for it); `data` streams within credit,
   * so a large send never sits in memory. Resolves once every byte is in the process's stdin pipe. No
   * deadline (it may wait behind another send or a process that reads slowly): `signal` abandons it.
   */
  sessionSend(
    name: string,
    data: Buffer | AsyncIterable<Buffer | Uint8Array>,
    opts: { closeStdin?: boolean; signal?: AbortSignal } = {},
  ): Promise<{ bytes: number }> {
    return this.channels.sendToSession(name, data, opts);
  }

  /** Ends the connection; pending requests and processes fail with Unavailable. */
  close(): void {
    this.conn.close();
  }

  /**
   * Sends a request and waits for its reply. `deferTimeout` hands back a function that starts the deadline
   * (writeFile starts it once the content is sent); otherwise it starts now.
   */
  private request(
    type: AgentRequestType,
    body: object,
    opts: RequestOptions,
    deferTimeout?: (arm: () => void) => void,
  ): Promise<unknown> {
    if (this.closeError) return Promise.reject(this.closeError);
    if (opts.signal?.aborted) return Promise.reject(new BangerError(ErrorCode.Cancelled, `${type} cancelled`));
    const id = this.nextId;
    this.nextId = id >= 0x7fffffff ? 1 : id + 1;
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const onAbort = () => fail(new BangerError(ErrorCode.Cancelled, `${type} cancelled`));
      const entry: Pending = {
        type,
        resolve,
        reject,
        cleanup: () => {
          clearTimeout(entry.timer);
          opts.signal?.removeEventListener('abort', onAbort);
          this.pending.delete(id);
        },
      };
      const fail = (e: BangerError) => {
        entry.cleanup();
        reject(e);
      };
      const arm = () => {
        if (!this.pending.has(id)) return;
        entry.timer = setTimeout(
          () =>
            fail(
              new BangerError(
                ErrorCode.DeadlineExceeded,
                `the guest agent${this.label} did not answer ${type} within ${timeoutMs / 1000} s`,
                {
                  hint: 'the VM may be overloaded or its agent stuck; `banger vm restart` restarts it',
                },
              ),
            ),
          timeoutMs,
        );
      };
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, entry);
      if (deferTimeout) deferTimeout(arm);
      else arm();
      this.conn.sendControl({ type, id, ...body });
    });
  }

  private onControl(raw: unknown): void {
    const parsed = agentMessageSchema.safeParse(raw);
    if (!parsed.success)
      throw new FrameError(`invalid message from the agent: ${parsed.error.issues[0]?.message ?? ''}`);
    const m = parsed.data;
    if (m.type === 'exit') {
      this.channels.end(m.channel)?.exit?.({ code: m.code, signal: m.signal });
      return;
    }
    if (m.type === 'sessionEnd') {
      this.channels.end(m.channel)?.sessionEnd?.(m);
      return;
    }
    if (m.type === 'ports') {
      // A change that races with the end of a watch is dropped.
      this.portsListener?.({ ports: m.ports, truncated: m.truncated });
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return; // the reply to a request given up on
    p.cleanup();
    if (!m.ok) {
      p.reject(new BangerError(agentCode(m.error.code), `guest agent${this.label}: ${escapeForTerminal(m.error.message)}`));
      return;
    }
    const result = AGENT_RESULT_SCHEMAS[p.type].safeParse(m.result);
    if (!result.success) {
      p.reject(this.unavailable(`sent an invalid ${p.type} result`));
      throw new FrameError(`invalid ${p.type} result: ${result.error.issues[0]?.message ?? ''}`);
    }
    p.resolve(result.data);
  }

  private onClosed(error?: Error): void {
    const why = error ? `: ${escapeForTerminal(error.message)}` : '';
    if (error) this.opts.log?.(`guest agent${this.label} connection dropped${why}`);
    this.closeError = this.unavailable(
      error instanceof FrameError
        ? `broke the protocol${why}; the connection was dropped`
        : `closed the connection${why}`,
    );
    for (const p of [...this.pending.values()]) {
      p.cleanup();
      p.reject(this.closeError);
    }
    this.channels.failAll(this.closeError);
    this.portsListener = null;
    const listeners = [...this.closeListeners];
    this.closeListeners.clear();
    for (const cb of listeners) cb(this.closeError);
  }

  private unavailable(what: string): BangerError {
    return new BangerError(ErrorCode.Unavailable, `the guest agent${this.label} ${what}`, {
      hint: 'the VM may have stopped or restarted; check it with `banger vm show`',
    });
  }
}

function agentCode(code: AgentErrorCode): Code {
  return ErrorCode[code];
}
