import { BangerError, ErrorCode } from '../../../errors/index.js';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  SESSION_STOP_TIMEOUT_SECONDS,
  type OutputStream,
  type SessionInfo,
  type SessionStartParams,
  type SessionStopParams,
  type SessionStopResult,
} from '../../../protocol/session.js';
import type { AgentSignal } from '../../../protocol/agent-fields.js';
import type { Logger } from '../../../shared/logger.js';
import type { AgentClient } from '../../guest/agent-client.js';
import { LOGIN_ENV } from '../../guest/agent-session.js';
import { commandPlace, guestDir } from '../vm/guest-access.js';
import type { AgentSessionAttachment, SessionReadFrom } from '../../guest/agent-channels.js';
import type { VmRecord } from '../../store/repos/vms.js';

/** What the session service needs of the VM service: a running VM's guest agent. */
export interface AgentSource {
  agent(vmName: string, signal?: AbortSignal): Promise<{ vm: VmRecord; agent: AgentClient; features: ReadonlySet<string> }>;
}

/** One chunk of session output for a client, at its byte offset in its stream. */
export interface OutputChunk {
  stream: OutputStream;
  offset: number;
  data: Buffer;
}

export interface SessionEnd {
  stdoutOffset: number;
  stderrOffset: number;
  session: SessionInfo;
}

/** Time for `stop`'s waits (tests pass their own). */
export interface SessionClock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** How often `stop` asks whether the session has ended. */
const STOP_POLL_MS = 100;
/** How long `stop` waits for a session to end after SIGKILL. */
const KILL_WAIT_MS = 5_000;

/** A send spanning several requests (same sendId), open until its final part. */
interface OpenSend {
  push(data: Buffer): Promise<void>;
  finish(): Promise<{ bytes: number }>;
  abort(): void;
}

/**
 * Sessions of a VM: processes the guest agent owns (see src/agent/sessions.ts), driven through it. Holds no
 * state of its own beyond sends in progress: a session is whatever the agent reports, so a daemon restart
 * loses nothing.
 */
export class SessionService {
  private readonly sends = new Map<string, OpenSend>();

  private readonly clock: SessionClock;

  constructor(private readonly d: { vms: AgentSource; log: Logger; clock?: SessionClock }) {
    this.clock = d.clock ?? { now: () => Date.now(), sleep: (ms, signal) => sleep(ms, undefined, { signal }) };
  }

  /**
   * Starts a session as `vm exec` runs a command: as a root login (LOGIN_ENV: HOME, USER, LANG...; TERM for a
   * terminal; the given variables over them), in the VM's workspace unless `cwd` says otherwise (the home
   * directory without one; a relative `cwd` is taken from there), and there under `mise exec` when the
   * workspace's mise config applies.
   */
  async start(p: SessionStartParams, signal?: AbortSignal): Promise<SessionInfo> {
    const { vm, agent } = await this.agentWithVm(p.vm, signal);
    const { cwd, mise } = commandPlace(vm, p.cwd === undefined ? undefined : guestDir(vm, p.cwd));
    // The agent's NotFound for a start is the directory: in the workspace (`mise`), it was removed in the guest.
    const inWorkspace = (e: unknown) => {
      if (!mise || !(e instanceof BangerError) || e.code !== ErrorCode.NotFound) throw e;
      throw new BangerError(ErrorCode.NotFound, `the workspace ${cwd} of VM ${p.vm} is not in the guest any more`, {
        hint: `import it again with \`banger vm workspace prepare ${p.vm} REPO\`, or start the session elsewhere with --cwd DIR`,
      });
    };
    return agent.sessionStart({
      name: p.name,
      argv: p.argv,
      tty: p.tty,
      size: p.size,
      cwd,
      // A terminal session's programs draw for a modern terminal unless told otherwise (the CLI passes its TERM).
      env: { ...LOGIN_ENV, ...(p.tty ? { TERM: 'xterm-256color' } : {}), PWD: cwd, ...p.env },
      capBytes: p.maxOutputBytes,
      mise: mise || undefined,
      signal,
      timeoutMs: 30_000,
    }).catch(inWorkspace);
  }

  async list(vm: string, signal?: AbortSignal): Promise<SessionInfo[]> {
    return (await this.agentOf(vm, signal)).sessionList({ signal });
  }

  async show(vm: string, session: string, signal?: AbortSignal): Promise<SessionInfo> {
    return named(vm, session, (await this.agentOf(vm, signal)).sessionShow(session, { signal }));
  }

  /**
   * Ends a session as `docker stop` ends a container: its process group gets `p.signal` (default SIGTERM); once
   * it has not ended within `p.timeoutSeconds`, SIGKILL. Resolves with the ended session and the signals sent, so
   * a `session rm` right after works. An ended session is returned as it is, nothing sent (safe to retry).
   * `wait: false` only signals.
   * (The daemon asks the agent for the session's state every STOP_POLL_MS: any agent can answer that.)
   */
  async stop(p: SessionStopParams, signal?: AbortSignal): Promise<SessionStopResult> {
    const agent = await this.agentOf(p.vm, signal);
    const first = (p.signal ?? 'SIGTERM') as AgentSignal;
    // The agent signals only a running session; one that has ended is reported as it is.
    let s = await named(p.vm, p.session, agent.sessionShow(p.session, { signal }));
    if (s.state !== 'running') return { ...s, sent: [] };
    const sent: string[] = [first];
    s = await agent.sessionStop(p.session, first, { signal });
    if (p.wait === false) return { ...s, sent };
    s = await this.untilEnded(agent, s, (p.timeoutSeconds ?? SESSION_STOP_TIMEOUT_SECONDS) * 1000, signal);
    if (s.state === 'running' && first !== 'SIGKILL') {
      this.d.log.info({ vm: p.vm, session: p.session, signal: first }, 'session did not end in time: SIGKILL');
      sent.push('SIGKILL');
      s = await agent.sessionStop(p.session, 'SIGKILL', { signal });
      s = await this.untilEnded(agent, s, KILL_WAIT_MS, signal);
    }
    if (s.state === 'running')
      throw new BangerError(
        ErrorCode.DeadlineExceeded,
        `session ${p.session} in VM '${p.vm}' is still running ${KILL_WAIT_MS / 1000} s after SIGKILL`,
        { hint: `its process may be stuck in the kernel: see \`banger vm exec ${p.vm} -- ps -eo pid,stat,wchan,args\`` },
      );
    return { ...s, sent };
  }

  /** `s` once it is no longer running, or as it is after `ms`. */
  private async untilEnded(agent: AgentClient, s: SessionInfo, ms: number, signal?: AbortSignal): Promise<SessionInfo> {
    const deadline = this.clock.now() + ms;
    while (s.state === 'running') {
      const left = deadline - this.clock.now();
      if (left <= 0) break;
      await this.clock.sleep(Math.min(STOP_POLL_MS, left), signal);
      s = await agent.sessionShow(s.name, { signal });
    }
    return s;
  }

  async rm(vm: string, session: string, signal?: AbortSignal): Promise<{ removed: string }> {
    return named(vm, session, (await this.agentOf(vm, signal)).sessionRm(session, { signal }));
  }

  /** Streams one output stream from `from`; with `follow` until the session ends. Aborting stops reading. */
  async logs(
    p: { vm: string; session: string; from?: SessionReadFrom; stream?: OutputStream; follow?: boolean },
    onOutput: (c: OutputChunk) => Promise<void>,
    signal?: AbortSignal,
  ): Promise<SessionEnd> {
    const agent = await this.agentOf(p.vm, signal);
    const s = await named(
      p.vm,
      p.session,
      agent.sessionLogs({
        name: p.session,
        from: p.from,
        stream: p.stream,
        follow: p.follow,
        onOutput: (c) => onOutput(c),
        signal,
      }),
    );
    const end = await s.ended;
    return { stdoutOffset: end.stdoutOffset, stderrOffset: end.stderrOffset, session: end.session };
  }

  /**
   * Attaches exclusively and streams both outputs until the session ends or `signal` aborts (detach: the
   * session keeps running). `onAttached` gets the attachment for stdin and resizes.
   */
  async attach(
    p: { vm: string; session: string; from?: SessionReadFrom; client?: string },
    onOutput: (c: OutputChunk) => Promise<void>,
    onAttached: (a: AgentSessionAttachment) => void,
    signal?: AbortSignal,
  ): Promise<SessionEnd> {
    const agent = await this.agentOf(p.vm, signal);
    const a = await named(
      p.vm,
      p.session,
      agent.sessionAttach({ name: p.session, from: p.from, client: p.client, onOutput: (c) => onOutput(c), signal }),
    );
    onAttached(a);
    const end = await a.ended;
    return { stdoutOffset: end.stdoutOffset, stderrOffset: end.stderrOffset, session: end.session };
  }

  /**
   * One part of a send. Parts with the same sendId form one send, delivered whole to the session's stdin
   * (other senders wait); the agent takes each part within its credit, so nothing piles up here.
   */
  async send(
    p: { vm: string; session: string; sendId: string; data: Buffer; final: boolean },
    signal?: AbortSignal,
  ): Promise<{ bytes: number }> {
    const key = `${p.vm}\u0000${p.session}\u0000${p.sendId}`;
    let open = this.sends.get(key);
    if (!open) {
      open = this.openSend(await this.agentOf(p.vm, signal), p.vm, p.session);
      this.sends.set(key, open);
    }
    const current = open;
    const onAbort = () => {
      current.abort();
      this.sends.delete(key);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await current.push(p.data);
      if (!p.final) return { bytes: p.data.length };
      this.sends.delete(key);
      return await current.finish();
    } catch (e) {
      this.sends.delete(key);
      current.abort();
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  private openSend(agent: AgentClient, vm: string, session: string): OpenSend {
    // The parts flow through an async iterable into one agent send; `push` resolves once the agent took it.
    const queue: { data: Buffer; taken: () => void }[] = [];
    let wake: (() => void) | undefined;
    let done = false;
    const abort = new AbortController();
    async function* parts(): AsyncGenerator<Buffer> {
      for (;;) {
        const next = queue.shift();
        if (next) {
          yield next.data;
          next.taken();
          continue;
        }
        if (done) return;
        await new Promise<void>((r) => (wake = r));
      }
    }
    const result = named(vm, session, agent.sessionSend(session, parts(), { signal: abort.signal }));
    result.catch(() => {});
    // A send whose client vanished between parts is abandoned after a minute.
    let idle = setTimeout(() => abort.abort(), 60_000);
    return {
      push: (data) =>
        new Promise<void>((resolve, reject) => {
          clearTimeout(idle);
          idle = setTimeout(() => abort.abort(), 60_000);
          result.catch(reject);
          queue.push({ data, taken: resolve });
          wake?.();
        }),
      finish: async () => {
        clearTimeout(idle);
        done = true;
        wake?.();
        return result;
      },
      abort: () => {
        clearTimeout(idle);
        abort.abort();
        done = true;
        wake?.();
      },
    };
  }

  private async agentOf(vmName: string, signal?: AbortSignal): Promise<AgentClient> {
    return (await this.agentWithVm(vmName, signal)).agent;
  }

  private async agentWithVm(vmName: string, signal?: AbortSignal): Promise<{ vm: VmRecord; agent: AgentClient }> {
    const { vm, agent, features } = await this.d.vms.agent(vmName, signal);
    if (!features.has('sessions'))
      throw new BangerError(ErrorCode.FailedPrecondition, `the guest agent of VM '${vm.name}' cannot run sessions`, {
        hint: 'rebuild the image with `banger image build --force NAME` (sessions need python3 in the guest)',
      });
    return { vm, agent };
  }
}

/**
 * `p`, its NotFound said in the user's terms: for an operation on an existing session, the agent's NotFound means
 * the VM has no session of that name (the agent knows neither the VM's name nor the CLI).
 */
function named<T>(vm: string, session: string, p: Promise<T>): Promise<T> {
  return p.catch((e: unknown) => {
    if (!(e instanceof BangerError) || e.code !== ErrorCode.NotFound) throw e;
    throw new BangerError(ErrorCode.NotFound, `VM '${vm}' has no session '${session}'`, {
      hint: `\`banger vm session list ${vm}\` shows its sessions`,
    });
  });
}
