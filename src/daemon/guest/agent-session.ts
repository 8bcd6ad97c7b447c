import { finished } from 'node:stream/promises';
import { BangerError, ErrorCode } from '../../errors/index.js';
import { shellStatus } from '../../shared/command.js';
import type { AgentClient, AgentProcess } from './agent-client.js';
import { AGENT_SIGNALS, type AgentSignal } from '../../protocol/agent-fields.js';
import { GUEST_ENVIRONMENT } from './init/scripts.js';
import {
  MAX_COLLECTED_BYTES,
  OutputCollector,
  type GuestExecOptions,
  type GuestExecResult,
  type GuestSession,
} from './session.js';

/** root's home in a guest: where a command runs without a workspace or a directory of its own. */
export const GUEST_HOME = '/root';

/** The environment of a root login in a banger guest (sshd + pam_env give SSH sessions the same). */
export const LOGIN_ENV: Readonly<Record<string, string>> = {
  HOME: GUEST_HOME,
  USER: 'root',
  LOGNAME: 'root',
  SHELL: '/bin/bash',
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C.UTF-8',
  ...GUEST_ENVIRONMENT,
};

/**
 * A guest session over the guest agent: the same contract as the SSH session (a shell command line run by
 * /bin/sh as root, streamed output, exit status verbatim), so every caller can use either channel; plus
 * {@link AgentGuestSession.execArgv}, which skips the shell.
 * Collected output (no stream given) is capped like the SSH session's.
 */
export class AgentGuestSession implements GuestSession {
  constructor(
    private readonly agent: AgentClient,
    private readonly maxCollectedBytes = MAX_COLLECTED_BYTES,
  ) {}

  get isClosed(): boolean {
    return this.agent.closed;
  }

  async exec(command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    opts.signal?.throwIfAborted();
    // What an SSH login as root gives a command: its home as the working directory and the usual variables.
    return this.run(await this.start({ shell: command }, GUEST_HOME, opts), opts);
  }

  /**
   * Runs `argv` itself in `cwd`, with no shell in between: one process start fewer, which is most of what
   * a short command costs in an emulated guest. When the agent cannot start it (no such command or
   * directory, not executable), `shellLine` (the same command as a shell line) runs instead, so the
   * caller gets the shell's message and status (127, 126, 2) exactly as over SSH. With `mise`, the agent
   * decides whether it runs under `mise exec` (as the shell line would; protocol/mise.ts).
   */
  async execArgv(
    argv: string[],
    cwd: string,
    shellLine: string,
    opts: GuestExecOptions = {},
    mise = false,
  ): Promise<GuestExecResult> {
    opts.signal?.throwIfAborted();
    let proc: AgentProcess;
    try {
      // PWD as a shell's `cd` would leave it, not the agent's own.
      proc = await this.start({ argv, mise }, cwd, { ...opts, env: { PWD: cwd, ...opts.env } });
    } catch (e) {
      const code = e instanceof BangerError ? e.code : null;
      if (code !== ErrorCode.NotFound && code !== ErrorCode.FailedPrecondition) throw e;
      return this.exec(shellLine, opts);
    }
    return this.run(proc, opts);
  }

  /** Takes the process the agent holds under `key` (AgentClient.prespawn) and runs it to its end. */
  async execPrespawned(key: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    opts.signal?.throwIfAborted();
    return this.run(await this.agent.exec({ prespawned: key, stdin: opts.stdin !== undefined, signal: opts.signal }), opts);
  }

  private start(
    command: { shell: string } | { argv: string[]; mise?: boolean },
    cwd: string,
    opts: GuestExecOptions,
  ): Promise<AgentProcess> {
    return this.agent.exec({
      ...command,
      cwd,
      env: { ...LOGIN_ENV, ...opts.env },
      stdin: opts.stdin !== undefined,
      pty: opts.pty ? { cols: opts.pty.cols, rows: opts.pty.rows } : undefined,
      signal: opts.signal,
    });
  }

  private async run(proc: AgentProcess, opts: GuestExecOptions): Promise<GuestExecResult> {
    const collected = new OutputCollector(() => proc.kill('SIGKILL'), this.maxCollectedBytes);
    if (opts.stdout) proc.stdout.pipe(opts.stdout, { end: false });
    else proc.stdout.on('data', collected.sink('stdout'));
    if (opts.stderr) proc.stderr.pipe(opts.stderr, { end: false });
    else proc.stderr.on('data', collected.sink('stderr'));
    if (proc.stdin) {
      const stdin = proc.stdin;
      if (opts.stdin) {
        opts.stdin.pipe(stdin);
        opts.stdin.on('error', () => stdin.end());
      } else stdin.end();
    }
    opts.onStart?.({
      resize: (rows, cols) => proc.resize(cols, rows),
      signal: (name) => {
        if ((AGENT_SIGNALS as readonly string[]).includes(name)) proc.kill(name as AgentSignal);
      },
    });
    const onAbort = () => proc.kill('SIGKILL');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    // The exit can come in the same read as the last output: the output is all read before this returns.
    const drained = Promise.all([proc.stdout, proc.stderr].map((r) => finished(r).catch(() => {})));
    try {
      const status = await proc.exited;
      await drained;
      if (opts.signal?.aborted) {
        const timedOut = (opts.signal.reason as Error | undefined)?.name === 'TimeoutError';
        throw timedOut
          ? new BangerError(ErrorCode.DeadlineExceeded, 'the guest command did not finish in time')
          : new BangerError(ErrorCode.Cancelled, 'cancelled');
      }
      if (collected.overflowed)
        throw new BangerError(
          ErrorCode.ResourceExhausted,
          `the guest command wrote more than ${this.maxCollectedBytes} bytes of output; it was stopped`,
        );
      return {
        code: shellStatus(status.code, status.signal),
        stdout: Buffer.concat(collected.stdout),
        stderr: Buffer.concat(collected.stderr),
      };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }
}

/**
 * Whether a command the agent was asked to run may go over SSH instead: the agent failed (Unavailable: a
 * dropped or misbehaving agent) before the command started, so nothing ran. Once it started, or when the
 * caller gave up, the failure is the caller's.
 */
export function agentFailedBeforeStart(e: unknown, started: boolean, signal?: AbortSignal): e is BangerError {
  return !started && !signal?.aborted && e instanceof BangerError && e.code === ErrorCode.Unavailable;
}

/**
 * Runs each command over the guest agent, or over SSH when the agent fails before the command starts (a
 * dropped or misbehaving agent: nothing ran, so nothing runs twice). Bulk transfers (workspace imports and
 * exports) use it: the agent's channel carries no encryption the emulated guest has to undo (a 64 MiB stdin
 * took 5.2-6.6 s through the agent against 7.1-8.4 s through SSH with AES-GCM, here under TCG).
 */
export class AgentFirstSession implements GuestSession {
  private last: { isClosed: boolean };

  constructor(
    private readonly agent: AgentGuestSession,
    private readonly ssh: () => Promise<GuestSession & { isClosed: boolean }>,
    private readonly onFallback: (err: Error) => void,
  ) {
    this.last = agent;
  }

  /** Whether the channel of the last command closed (the VM stopped, or its connection dropped). */
  get isClosed(): boolean {
    return this.last.isClosed;
  }

  async exec(command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    let started = false;
    try {
      this.last = this.agent;
      return await this.agent.exec(command, {
        ...opts,
        onStart: (c) => {
          started = true;
          opts.onStart?.(c);
        },
      });
    } catch (e) {
      if (!agentFailedBeforeStart(e, started, opts.signal)) throw e;
      this.onFallback(e);
      const ssh = await this.ssh();
      this.last = ssh;
      return ssh.exec(command, opts);
    }
  }
}
