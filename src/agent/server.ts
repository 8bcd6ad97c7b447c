import type { Duplex } from 'node:stream';
import { FrameConnection, FrameError } from '../protocol/agent-frames.js';
import {
  AGENT_FEATURES,
  AGENT_PROTOCOL_VERSION,
  FrameKind,
  hostMessageSchema,
  type AgentErrorCode,
  type AgentFeature,
  type HostMessage,
  type StreamKind,
} from '../protocol/agent.js';
import { AgentFailure, type ChannelIo } from './channel.js';
import { ExecChannel } from './exec.js';
import { runCommand, setClockArgv, WriteFileChannel, type CommandRunner } from './files.js';
import { StatsSampler } from './stats.js';

export interface AgentServerOptions {
  agentVersion: string;
  /** python3's path, for `pty` execs; null when the guest has none. */
  python: string | null;
  /** Runs helper commands (`date` for setClock). */
  runCommand?: CommandRunner;
  /** Diagnostics (the guest's console or journal). */
  log?: (line: string) => void;
}

/** Open channels one connection may hold; past it `exec` and `writeFile` fail with ResourceExhausted. */
export const MAX_CHANNELS = 1024;

interface Channel {
  stdin(payload: Buffer): boolean;
  credit?(stream: StreamKind, bytes: number): void;
  dispose(): void;
}

/**
 * The guest end of the protocol. `serve` handles one connection at a time or several at once (each with its
 * own channels); when a connection ends its processes are killed and its temporary files removed, and the
 * agent is ready for the next one (the daemon restarting must not need a guest restart).
 */
export class AgentServer {
  private readonly stats = new StatsSampler();

  constructor(private readonly opts: AgentServerOptions) {}

  /** Serves `stream` until it ends or breaks the protocol. Never rejects. */
  serve(stream: Duplex): Promise<void> {
    return new Promise((resolve) => {
      new AgentSession(stream, this.opts, this.stats, resolve);
    });
  }
}

class AgentSession {
  private readonly conn: FrameConnection;
  private readonly channels = new Map<number, Channel>();
  private readonly features: AgentFeature[];

  constructor(
    stream: Duplex,
    private readonly opts: AgentServerOptions,
    private readonly stats: StatsSampler,
    onClosed: () => void,
  ) {
    this.features = AGENT_FEATURES.filter((f) => f !== 'pty' || opts.python !== null);
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
          for (const ch of this.channels.values()) ch.dispose();
          this.channels.clear();
          onClosed();
        },
      },
      { greetFirst: false },
    );
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
      case 'exec': {
        if (!this.claim(m.id, m.channel)) return;
        const ch = new ExecChannel(m, this.io(m.channel), this.opts.python);
        this.channels.set(m.channel, ch);
        return this.reply(m.id, async () => {
          try {
            return await ch.start();
          } catch (e) {
            this.channels.delete(m.channel);
            ch.dispose();
            throw e;
          }
        });
      }
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
        return this.execChannel(m.channel)?.resize(m.cols, m.rows);
    }
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
        (e: unknown) => {
          if (e instanceof AgentFailure) this.replyError(id, e.code, e.message);
          else this.replyError(id, 'Internal', e instanceof Error ? e.message : String(e));
        },
      );
  }

  private replyError(id: number, code: AgentErrorCode, message: string): void {
    this.conn.sendControl({ type: 'reply', id, ok: false, error: { code, message: message.slice(0, 4000) } });
  }
}
