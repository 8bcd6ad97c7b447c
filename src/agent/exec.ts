import { statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { InboundWindow, OutboundWindow } from '../protocol/agent-flow.js';
import { FrameKind, type ExecRequest, type StreamKind } from '../protocol/agent.js';
import type { AgentSignal } from '../protocol/agent-fields.js';
import { AgentFailure, type ChannelIo } from './channel.js';
import { PTY_HELPER_SOURCE } from './pty-helper.js';
import { nodeSpawner, type Spawned, type Spawner } from './spawner.js';
import { spawnFailure, type PrespawnedProcesses } from './prespawned.js';
import { underMise } from './mise.js';

/**
 * One `exec` channel in the guest: a child process whose stdout and stderr go out within the daemon's
 * credit (the child is paused, so a flood of output waits in the kernel's pipe, not in the agent) and whose
 * stdin comes in within the credit the agent grants as the child's pipe takes it.
 */
export class ExecChannel {
  private child: Spawned | null = null;
  private readonly stdinWindow = new InboundWindow();
  private readonly out: OutboundWindow;
  private readonly err: OutboundWindow;
  private exit: { code: number | null; signal: string | null } | null = null;
  private exitSent = false;
  private disposed = false;

  constructor(
    private readonly req: ExecRequest,
    private readonly io: ChannelIo,
    /** python3's path when a pty can be offered, else null. */
    private readonly python: string | null,
    /** Starts the process (a pty exec always with Node's spawn: it needs fd 3). */
    private readonly spawner: Spawner = nodeSpawner,
    /** Where `{ prespawned: key }` takes its process from. */
    private readonly prespawned?: PrespawnedProcesses,
  ) {
    this.out = new OutboundWindow((b) => io.sendData(FrameKind.Stdout, b));
    this.err = new OutboundWindow((b) => io.sendData(FrameKind.Stderr, b));
    this.out.onFinished = () => this.maybeExit();
    this.err.onFinished = () => this.maybeExit();
  }

  /** Spawns the process; resolves with its pid once it exists, rejects with an AgentFailure otherwise. Its output waits for `begin`. */
  async start(): Promise<{ pid: number }> {
    const { req } = this;
    if ('prespawned' in req.command) return this.adopt(req.command.prespawned);
    const cwd = req.cwd ?? process.env.HOME ?? '/';
    // Not fs.promises: its trip through the thread pool cost ~1.4 ms of an exec under emulation, this 0.1.
    let dir;
    try {
      dir = statSync(cwd);
    } catch {
      dir = null;
    }
    if (!dir?.isDirectory()) throw new AgentFailure('NotFound', `no directory ${cwd} in the guest`);
    const env = { ...process.env, ...req.env };
    let argv = 'argv' in req.command ? req.command.argv : ['/bin/sh', '-c', req.command.shell];
    if (req.mise && 'argv' in req.command) argv = underMise(argv, cwd, env);
    let file = argv[0];
    let args = argv.slice(1);
    if (req.pty) {
      if (this.python === null)
        throw new AgentFailure(
          'FailedPrecondition',
          'this guest cannot give a terminal: python3 is not installed in the image',
        );
      file = this.python;
      args = ['-c', PTY_HELPER_SOURCE, String(req.pty.rows), String(req.pty.cols), ...argv];
    }
    const spawner = req.pty ? nodeSpawner : this.spawner;
    let child: Spawned;
    try {
      child = await spawner.spawn({
        file,
        args,
        cwd,
        env,
        stdin: req.stdin === true,
        control: req.pty !== undefined,
      });
    } catch (e) {
      throw spawnFailure(e, file);
    }
    return this.started(child);
  }

  /** Takes the process held under `key` (its stdin closed at once unless the request streams one). */
  private adopt(key: string): { pid: number } {
    if (this.req.pty) throw new AgentFailure('InvalidArgument', 'a prespawned process has no terminal');
    const child = this.prespawned?.take(key);
    if (!child) throw new AgentFailure('NotFound', `no prespawned process '${key}' in the guest`);
    if (this.req.stdin !== true) child.stdin?.end();
    return this.started(child);
  }

  private started(child: Spawned): { pid: number } {
    this.child = child;
    // The connection went while the process started: it is not left running.
    if (this.disposed) this.killGroup(child.pid);
    child.stdin?.on('error', () => {}); // EPIPE once the process stops reading; its input is dropped
    child.onExit((code, signal) => {
      this.exit = { code, signal };
      this.maybeExit();
    });
    return { pid: child.pid };
  }

  /**
   * Starts sending the process's output: called once the reply to `exec` is sent, so no output frame
   * overtakes it (a process can have written before `start` resolves).
   */
  begin(): void {
    if (!this.child || this.disposed) return;
    this.pump(this.child.stdout, this.out);
    this.pump(this.child.stderr, this.err);
  }

  /** Bytes for the process's stdin; an empty payload closes it. False when the daemon overran its credit. */
  stdin(payload: Buffer): boolean {
    const sink = this.child?.stdin;
    if (!sink || sink.destroyed) return true;
    if (payload.length === 0) {
      sink.end();
      return true;
    }
    if (!this.stdinWindow.accept(payload.length)) return false;
    const n = payload.length;
    sink.write(payload, () => this.io.sendCredit(FrameKind.Stdin, this.stdinWindow.consumed(n)));
    return true;
  }

  credit(stream: StreamKind, bytes: number): void {
    if (stream === FrameKind.Stdout) this.out.grant(bytes);
    else if (stream === FrameKind.Stderr) this.err.grant(bytes);
  }

  /** Sends `signal` to the process group (the pty helper forwards it into the terminal's session). */
  signal(signal: AgentSignal): void {
    const pid = this.child?.pid;
    if (pid === undefined || this.exit !== null) return;
    this.killGroup(pid, signal);
  }

  private killGroup(pid: number, signal: AgentSignal = 'SIGKILL'): void {
    try {
      process.kill(-pid, signal);
    } catch {
      // the group is already gone
    }
  }

  resize(cols: number, rows: number): void {
    const control = this.child?.control;
    if (control && !control.destroyed) control.write(`${rows} ${cols}\n`);
  }

  /** The connection is gone: kill the process group and send nothing more. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.out.abandon();
    this.err.abandon();
    if (this.exit === null) this.signal('SIGKILL');
    this.child?.stdout?.destroy();
    this.child?.stderr?.destroy();
  }

  private pump(from: Readable, to: OutboundWindow): void {
    // A stream can have ended before it was handed out (a socket's end is emitted
    // even while paused once nothing is buffered).
    if (from.readableEnded) {
      to.end();
      return;
    }
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk, () => from.resume())) from.pause();
    });
    from.once('end', () => to.end());
    from.on('error', () => to.end());
    // A spawner may hand out paused streams (nothing is read before this listener exists).
    from.resume();
  }

  private maybeExit(): void {
    if (this.exitSent || this.disposed || this.exit === null || !this.out.finished || !this.err.finished) return;
    this.exitSent = true;
    this.child?.control?.destroy();
    this.io.sendExit(this.exit.code, this.exit.signal);
  }
}
