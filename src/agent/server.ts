import type { Duplex } from 'node:stream';
import { FrameConnection, FrameError } from '../protocol/agent-frames.js';
import {
  AGENT_FEATURES,
  AGENT_PROTOCOL_VERSION,
  FrameKind,
  hostMessageSchema,
  type AgentErrorCode,
  type AgentFeature,
  type AgentPortList,
  type HostMessage,
  type StreamKind,
} from '../protocol/agent.js';
import { AgentFailure, type ChannelIo } from './channel.js';
import { ExecChannel } from './exec.js';
import { nodeSpawner, type Spawner } from './spawner.js';
import { PrespawnedProcesses } from './prespawned.js';
import { runCommand, setClockArgv, WriteFileChannel, type CommandRunner } from './files.js';
import { StatsSampler } from './stats.js';
import { PortWatcher, type PortWatcherOptions } from './ports.js';
import { SessionStore } from './sessions.js';
import {
  SessionAttachChannel,
  SessionLogsChannel,
  SessionSendChannel,
  type SessionChannelIo,
} from './sessions-channels.js';

export interface AgentServerOptions {
  agentVersion: string;
  /** python3's path, for `pty` execs; null when the guest has none. */
  python: string | null;
  /** Runs helper commands (`date` for setClock). */
  runCommand?: CommandRunner;
  /** Diagnostics (the guest's console or journal). */
  log?: (line: string) => void;
  /** Where sessions are kept (`--sessions`), and the default per-stream cap on their output. */
  sessions?: { root: string; capBytes?: number };
  /** Where and how often `watchPorts` reads the listening sockets (default /proc/net, once a second). */
  ports?: Omit<PortWatcherOptions, 'log'>;
  /** Starts exec processes (default: Node's spawn; tests inject their own). */
  spawner?: Spawner;
}

/** Open channels one connection may hold; past it `exec` and `writeFile` fail with ResourceExhausted. */
export const MAX_CHANNELS = 1024;

interface Channel {
  stdin(payload: Buffer): boolean;
  credit?(stream: StreamKind, bytes: number): void;
  /** `sessionDetach`: end an attach or logs channel early, or abandon a send. */
  detach?(): void;
  resize?(cols: number, rows: number): void;
  dispose(): void;
}

/**
 * The guest end of the protocol. `serve` handles one connection at a time or several at once (each with its
 * own channels); when a connection ends its processes are killed and its temporary files removed, and the
 * agent is ready for the next one (the daemon restarting must not need a guest restart).
 */
export class AgentServer {
  private readonly stats = new StatsSampler();
  private readonly ports: PortWatcher;
  /** Shared by every connection: sessions belong to the agent, not to whoever started them. */
  private readonly sessions: SessionStore | null;
  /** Held for whichever connection takes them (prespawned.ts). */
  private readonly prespawned: PrespawnedProcesses;

  constructor(private readonly opts: AgentServerOptions) {
    this.prespawned = new PrespawnedProcesses(opts.spawner ?? nodeSpawner);
    this.sessions = opts.sessions ? new SessionStore({ ...opts.sessions, python: opts.python, log: opts.log }) : null;
    this.ports = new PortWatcher({ ...opts.ports, log: opts.log });
  }

  /** Serves `stream` until it ends or breaks the protocol. Never rejects. */
  serve(stream: Duplex): Promise<void> {
    return new Promise((resolve) => {
      new AgentSession(stream, this.opts, this.stats, this.ports, this.sessions, this.prespawned, resolve);
    });
  }
}

class AgentSession {
  private readonly conn: FrameConnection;
  private readonly channels = new Map<number, Channel>();
  private readonly features: AgentFeature[];
  /** Set while this connection watches the listening ports. */
  private portsListener: ((list: AgentPortList) => void) | null = null;

  constructor(
    stream: Duplex,
    private readonly opts: AgentServerOptions,
    private readonly stats: StatsSampler,
    private readonly ports: PortWatcher,
    private readonly sessions: SessionStore | null,
    private readonly prespawned: PrespawnedProcesses,
    onClosed: () => void,
    continued?: Buffer[],
  ) {
    this.features = AGENT_FEATURES.filter(
      (f) => (f !== 'pty' || opts.python !== null) && (f !== 'sessions' || sessions?.available === true),
    );
    this.conn = new FrameConnection(
      stream,
      {
        control: (m) => this.onControl(m),
        data: (channel, kind, payload) => {
          const ch = this.channels.get(channel);
          // Stdin for a channel that has already ended races with its exit event: dropped.
          if (ch && kind === FrameKind.Stdin && !ch.stdin(payload))
            throw new FrameError(`stdin of channel ${channel} overran its credit`);
        },
        credit: (channel, kind, bytes) => this.channels.get(channel)?.credit?.(kind, bytes),
        closed: (error) => {
          if (error) opts.log?.(`banger-agent: connection dropped: ${error.message}`);
          this.drop();
          onClosed();
        },
        // A new daemon, or this guest resumed from a snapshot under a new one, starts over on the same port:
        // what the old connection had open ends as if it had closed, and a new session serves the port.
        restarted: (rest) => {
          opts.log?.('banger-agent: the daemon started over on this connection');
          this.drop();
          new AgentSession(stream, opts, stats, ports, sessions, prespawned, onClosed, rest);
        },
      },
      { greetFirst: false, continued },
    );
  }

  /** Ends what this connection had open: its exec channels (their processes killed) and its port watch. */
  private drop(): void {
    for (const ch of this.channels.values()) ch.dispose();
    this.channels.clear();
    if (this.portsListener) this.ports.unwatch(this.portsListener);
    this.portsListener = null;
  }

  private onControl(raw: unknown): void {
    const parsed = hostMessageSchema.safeParse(raw);
    if (!parsed.success) {
      const r = (typeof raw === 'object' && raw !== null ? raw : {}) as { id?: unknown; type?: unknown };
      // A request whose id is readable gets an error reply, so a newer daemon learns what this agent lacks.
      if (typeof r.id !== 'number' || !Number.isInteger(r.id) || r.id < 0)
        throw new FrameError('control message without a request id failed validation');
      const known = hostMessageSchema.options.some((o) => o.shape.type.value === r.type);
      if (known)
        this.replyError(
          r.id,
          'InvalidArgument',
          `invalid ${String(r.type)} request: ${parsed.error.issues[0]?.message ?? ''}`,
        );
      else
        this.replyError(
          r.id,
          'Unimplemented',
          `this agent does not know ${JSON.stringify(r.type)?.slice(0, 64)} requests`,
        );
      return;
    }
    this.dispatch(parsed.data);
  }

  private dispatch(m: HostMessage): void {
    switch (m.type) {
      case 'hello':
        return this.reply(m.id, () => ({
          protocol: AGENT_PROTOCOL_VERSION,
          agentVersion: this.opts.agentVersion,
          pid: process.pid,
          node: process.version,
          features: this.features,
        }));
      case 'stats':
        return this.reply(m.id, () => this.stats.sample());
      case 'setClock':
        return this.reply(m.id, async () => {
          await (this.opts.runCommand ?? runCommand)(setClockArgv(m.epochMs));
          return { epochMs: Date.now() };
        });
      case 'watchPorts':
        return this.reply(m.id, () => this.watchPorts());
      case 'exec': {
        if (!this.claim(m.id, m.channel)) return;
        const ch = new ExecChannel(m, this.io(m.channel), this.opts.python, this.opts.spawner, this.prespawned);
        this.channels.set(m.channel, ch);
        void ch.start().then(
          (result) => {
            this.conn.sendControl({ type: 'reply', id: m.id, ok: true, result });
            ch.begin();
          },
          (e: unknown) => {
            this.channels.delete(m.channel);
            ch.dispose();
            this.replyFailure(m.id, e);
          },
        );
        return;
      }
      case 'prespawn':
        return this.reply(m.id, () => this.prespawned.start(m.key, m.argv, m.cwd ?? '/', { ...process.env }));
      case 'writeFile': {
        if (!this.claim(m.id, m.channel)) return;
        const ch = new WriteFileChannel(m, this.io(m.channel), (outcome) => {
          if (this.channels.get(m.channel) === ch) this.channels.delete(m.channel);
          if (outcome instanceof AgentFailure) this.replyError(m.id, outcome.code, outcome.message);
          else this.conn.sendControl({ type: 'reply', id: m.id, ok: true, result: outcome });
        });
        this.channels.set(m.channel, ch);
        return;
      }
      case 'signal':
        return this.execChannel(m.channel)?.signal(m.signal);
      case 'resize':
        return this.channels.get(m.channel)?.resize?.(m.cols, m.rows);
      case 'sessionDetach':
        return this.channels.get(m.channel)?.detach?.();
      case 'sessionStart':
        return this.reply(m.id, () => this.store().start(m));
      case 'sessionList':
        return this.reply(m.id, () => this.store().list());
      case 'sessionShow':
        return this.reply(m.id, async () => (await this.store().get(m.name)).info());
      case 'sessionStop':
        return this.reply(m.id, () => this.store().stop(m.name, m.signal ?? 'SIGTERM'));
      case 'sessionRm':
        return this.reply(m.id, () => this.store().rm(m.name));
      case 'sessionAttach':
      case 'sessionLogs':
        return this.openSessionStream(m);
      case 'sessionSend':
        return this.openSessionSend(m);
    }
  }

  /** Subscribes this connection (once) to changes of the listening sockets; returns the list as it is now. */
  private async watchPorts(): Promise<AgentPortList> {
    if (this.portsListener === null) {
      const listener = (list: AgentPortList) => {
        if (!this.conn.closed) this.conn.sendControl({ type: 'ports', ...list });
      };
      this.portsListener = listener;
      const list = await this.ports.watch(listener);
      // The connection may have ended during the first read.
      if (this.conn.closed) this.ports.unwatch(listener);
      return list;
    }
    return this.ports.watch(this.portsListener);
  }

  private store(): SessionStore {
    if (this.sessions === null || !this.sessions.available)
      throw new AgentFailure(
        'Unimplemented',
        'this agent keeps no sessions (it needs python3 and a sessions directory)',
      );
    return this.sessions;
  }

  /**
   * Attach and logs: the channel is claimed at once (frames for it may follow the request), the reply says
   * where reading starts, and only then does output flow, ended by a `sessionEnd` event.
   */
  private openSessionStream(m: Extract<HostMessage, { type: 'sessionAttach' | 'sessionLogs' }>): void {
    if (!this.claim(m.id, m.channel)) return;
    // A detach that arrives before the reply (the daemon gave up waiting) ends the stream as soon as it opens.
    let detachEarly = false;
    const placeholder: Channel = { stdin: () => true, detach: () => (detachEarly = true), dispose: () => {} };
    this.channels.set(m.channel, placeholder);
    const forget = () => {
      if (this.channels.get(m.channel) === ch || this.channels.get(m.channel) === placeholder)
        this.channels.delete(m.channel);
    };
    let ch: SessionAttachChannel | SessionLogsChannel | null = null;
    void (async () => {
      try {
        const session = await this.store().get(m.name);
        const io = this.sessionIo(m.channel);
        const c =
          m.type === 'sessionAttach' ? new SessionAttachChannel(session, io) : new SessionLogsChannel(session, io);
        ch = c;
        if (this.conn.closed || this.channels.get(m.channel) !== placeholder)
          throw new AgentFailure('Internal', 'gone');
        const result =
          m.type === 'sessionAttach'
            ? await (c as SessionAttachChannel).open(m)
            : await (c as SessionLogsChannel).open(m);
        if (this.conn.closed || this.channels.get(m.channel) !== placeholder) {
          c.dispose();
          return;
        }
        this.channels.set(m.channel, c);
        this.conn.sendControl({ type: 'reply', id: m.id, ok: true, result });
        if (detachEarly) c.detach();
        if (c instanceof SessionAttachChannel) await c.run();
        else await c.run(m as Extract<HostMessage, { type: 'sessionLogs' }>);
      } catch (e) {
        forget();
        this.replyFailure(m.id, e);
      }
    })();
  }

  private openSessionSend(m: Extract<HostMessage, { type: 'sessionSend' }>): void {
    if (!this.claim(m.id, m.channel)) return;
    let ch: SessionSendChannel | null = null;
    // Frames may arrive before the session is looked up; they wait in the channel (within the stream window).
    const early: Buffer[] = [];
    const placeholder: Channel = {
      stdin: (b) => (early.push(b), true),
      detach: () => ch?.detach(),
      dispose: () => ch?.dispose(),
    };
    this.channels.set(m.channel, placeholder);
    this.reply(m.id, async () => {
      try {
        const session = await this.store().get(m.name);
        ch = new SessionSendChannel(session, m, {
          sendCredit: (stream, bytes) => this.conn.sendCredit(m.channel, stream, bytes),
        });
        if (this.channels.get(m.channel) !== placeholder) ch.dispose();
        else this.channels.set(m.channel, ch);
        for (const b of early.splice(0)) if (!ch.stdin(b)) throw new FrameError('send overran its credit');
        return await ch.run();
      } finally {
        if (this.channels.get(m.channel) === ch || this.channels.get(m.channel) === placeholder)
          this.channels.delete(m.channel);
      }
    });
  }

  private sessionIo(channel: number): SessionChannelIo {
    return {
      sendData: (stream, payload) => this.conn.sendData(channel, stream, payload),
      sendCredit: (stream, bytes) => this.conn.sendCredit(channel, stream, bytes),
      end: (event) => {
        this.channels.delete(channel);
        this.conn.sendControl({ type: 'sessionEnd', channel, ...event });
      },
    };
  }

  private execChannel(channel: number): ExecChannel | undefined {
    const ch = this.channels.get(channel);
    return ch instanceof ExecChannel ? ch : undefined;
  }

  /** Checks that a new channel can be opened; replies with the error when not. */
  private claim(id: number, channel: number): boolean {
    if (this.channels.has(channel)) this.replyError(id, 'InvalidArgument', `channel ${channel} is already open`);
    else if (this.channels.size >= MAX_CHANNELS)
      this.replyError(
        id,
        'ResourceExhausted',
        `the agent already has ${MAX_CHANNELS} open channels; wait for some to end`,
      );
    else return true;
    return false;
  }

  private io(channel: number): ChannelIo {
    return {
      sendData: (stream, payload) => this.conn.sendData(channel, stream, payload),
      sendCredit: (stream, bytes) => this.conn.sendCredit(channel, stream, bytes),
      sendExit: (code, signal) => {
        this.channels.delete(channel);
        this.conn.sendControl({ type: 'exit', channel, code, signal });
      },
    };
  }

  private reply(id: number, work: () => unknown): void {
    void Promise.resolve()
      .then(work)
      .then(
        (result) => this.conn.sendControl({ type: 'reply', id, ok: true, result }),
        (e: unknown) => this.replyFailure(id, e),
      );
  }

  private replyFailure(id: number, e: unknown): void {
    if (e instanceof AgentFailure) this.replyError(id, e.code, e.message);
    else this.replyError(id, 'Internal', e instanceof Error ? e.message : String(e));
  }

  private replyError(id: number, code: AgentErrorCode, message: string): void {
    this.conn.sendControl({ type: 'reply', id, ok: false, error: { code, message: message.slice(0, 4000) } });
  }
}
