import { spawn } from 'node:child_process';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentSignal } from '../protocol/agent-fields.js';
import { AGENT_MAX_SESSIONS, type AgentSessionInfo, type SessionStartRequest } from '../protocol/agent-sessions.js';
import { AgentFailure } from './channel.js';
import { underMise } from './mise.js';
import { PTY_HELPER_SOURCE } from './pty-helper.js';
import { SESSION_SUPERVISOR_SOURCE } from './session-supervisor.js';
import { readJson, Session, writeJsonAtomic, type ExitRecord, type SessionMeta } from './sessions-session.js';

export { InputConnection, Session } from './sessions-session.js';

/**
 * Sessions: processes the agent keeps under a name, each in `ROOT/NAME/` on the work disk:
 *   meta.json    written by the agent before the start: argv, cwd, tty, size, startedAt, capBytes
 *   stdout.log   stderr.log   the process's output, append-only; a byte's offset is its position in the file
 *   capped       exists once a stream reached capBytes (later output of that stream was dropped)
 *   exit.json    the end: {state: exited, exitCode, signal, endedAt} from the supervisor, or {state: ended}
 *                written by the agent when the supervisor vanished without recording one (the guest stopped)
 *   ctl.sock     the supervisor's control socket while it runs
 *   stdin        the process's stdin, a FIFO the agent writes sends to; gone once stdin is closed or the process ended
 * Kept until `rm`. Each process runs under its own supervisor (`session-supervisor.ts`), not under the agent,
 * so a session outlives the connection that started it, the daemon, and the agent itself: a new agent on the
 * same root re-adopts every session whose supervisor still answers on its socket.
 */

/** Default per-stream cap on kept output. */
export const DEFAULT_SESSION_CAP_BYTES = 64 * 1024 * 1024;
/** Total bytes of a session's argv; with AGENT_MAX_SESSIONS it keeps a `sessionList` reply inside one frame. */
export const MAX_SESSION_ARGV_BYTES = 16 * 1024;
/** A unix socket path is at most 107 bytes: ROOT + "/" + a 64-byte name + "/ctl.sock" must fit. */
export const MAX_SESSION_ROOT_BYTES = 107 - 1 - 64 - '/ctl.sock'.length;
const START_TIMEOUT_MS = 15_000;

export interface SessionStoreOptions {
  root: string;
  capBytes?: number;
  /** python3, which runs the supervisors; without it sessions are refused. */
  python: string | null;
  log?: (line: string) => void;
}

export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  private readonly creating = new Set<string>();
  private readonly ready: Promise<void>;
  readonly capBytes: number;

  constructor(private readonly opts: SessionStoreOptions) {
    if (Buffer.byteLength(opts.root) > MAX_SESSION_ROOT_BYTES)
      throw new Error(`the sessions directory ${opts.root} is longer than ${MAX_SESSION_ROOT_BYTES} bytes`);
    this.capBytes = opts.capBytes ?? DEFAULT_SESSION_CAP_BYTES;
    this.ready = this.load().catch((e: unknown) => {
      opts.log?.(`banger-agent: cannot load sessions from ${opts.root}: ${(e as Error).message}`);
    });
  }

  get available(): boolean {
    return this.opts.python !== null;
  }

  /** Reads every session from disk and follows the ones whose supervisor still runs. */
  private async load(): Promise<void> {
    await mkdir(this.opts.root, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.opts.root)) {
      const dir = join(this.opts.root, name);
      const meta = await readJson<SessionMeta>(join(dir, 'meta.json'));
      if (meta === null || meta.name !== name) continue;
      const s = new Session(dir, meta);
      s.pid = (await readJson<{ pid: number }>(join(dir, 'run.json')))?.pid ?? null;
      s.exit = await readJson<ExitRecord>(join(dir, 'exit.json'));
      this.sessions.set(name, s);
      if (s.running) s.watchSupervisor();
    }
  }

  async get(name: string): Promise<Session> {
    await this.ready;
    const s = this.sessions.get(name);
    if (!s)
      throw new AgentFailure('NotFound', `no session ${name} in the guest; \`banger vm session list\` shows them`);
    return s;
  }

  async list(): Promise<AgentSessionInfo[]> {
    await this.ready;
    const all = [...this.sessions.values()].sort((a, b) => a.meta.startedAt.localeCompare(b.meta.startedAt));
    return Promise.all(all.map((s) => s.info()));
  }

  async start(req: SessionStartRequest): Promise<AgentSessionInfo> {
    await this.ready;
    const python = this.opts.python;
    if (python === null)
      throw new AgentFailure('FailedPrecondition', 'this guest cannot run sessions: python3 is not installed');
    const argvBytes = req.argv.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
    if (argvBytes > MAX_SESSION_ARGV_BYTES)
      throw new AgentFailure(
        'InvalidArgument',
        `a session's command line is at most ${MAX_SESSION_ARGV_BYTES} bytes; put a long script in a file`,
      );
    const name = req.name ?? this.freeName();
    if (this.sessions.has(name) || this.creating.has(name))
      throw new AgentFailure('AlreadyExists', `a session named ${name} exists; pick another name or rm it`);
    if (this.sessions.size + this.creating.size >= AGENT_MAX_SESSIONS)
      throw new AgentFailure(
        'ResourceExhausted',
        `the guest keeps at most ${AGENT_MAX_SESSIONS} sessions; remove ended ones with \`banger vm session rm\``,
      );
    const cwd = req.cwd ?? process.env.HOME ?? '/';
    if (!(await stat(cwd).catch(() => null))?.isDirectory())
      throw new AgentFailure('NotFound', `no directory ${cwd} in the guest`);
    const env = { ...process.env, ...req.env };
    const run = req.mise ? underMise(req.argv, cwd, env) : req.argv;
    this.creating.add(name);
    const dir = join(this.opts.root, name);
    try {
      const meta: SessionMeta = {
        name,
        argv: req.argv,
        ...(run !== req.argv ? { run } : {}),
        cwd,
        tty: req.tty === true,
        size: req.tty === true ? (req.size ?? { cols: 80, rows: 24 }) : null,
        startedAt: new Date().toISOString(),
        capBytes: req.capBytes ?? this.capBytes,
      };
      await mkdir(dir, { mode: 0o700 });
      await writeFile(join(dir, 'stdout.log'), '', { mode: 0o600 });
      await writeFile(join(dir, 'stderr.log'), '', { mode: 0o600 });
      await writeJsonAtomic(join(dir, 'meta.json'), meta);
      const session = new Session(dir, meta);
      session.pid = await this.spawnSupervisor(python, dir, req.argv[0], env);
      await writeJsonAtomic(join(dir, 'run.json'), { pid: session.pid });
      this.sessions.set(name, session);
      session.watchSupervisor();
      return await session.info();
    } catch (e) {
      if (!this.sessions.has(name)) await rm(dir, { recursive: true, force: true });
      throw e;
    } finally {
      this.creating.delete(name);
    }
  }

  async stop(name: string, signal: AgentSignal): Promise<AgentSessionInfo> {
    const s = await this.get(name);
    if (s.running) await s.command('S', signal);
    return s.info();
  }

  async rm(name: string): Promise<{ removed: string }> {
    const s = await this.get(name);
    if (s.running)
      throw new AgentFailure(
        'FailedPrecondition',
        `session ${name} is still running; stop it first with \`banger vm session stop\``,
      );
    this.sessions.delete(name);
    s.unwatch();
    await rm(s.dir, { recursive: true, force: true });
    s.notify();
    return { removed: name };
  }

  private freeName(): string {
    for (let i = 1; ; i++) if (!this.sessions.has(`s${i}`) && !this.creating.has(`s${i}`)) return `s${i}`;
  }

  /** Starts the supervisor, detached; resolves with the pid of the session's process once it exists. */
  private spawnSupervisor(python: string, dir: string, argv0: string, env: NodeJS.ProcessEnv): Promise<number> {
    return new Promise((resolve, reject) => {
      const sup = spawn(python, ['-c', SESSION_SUPERVISOR_SOURCE, dir], {
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
        cwd: dir,
      });
      let out = '';
      let err = '';
      let settled = false;
      const timer = setTimeout(
        () => done(new AgentFailure('Internal', 'the session supervisor did not start')),
        START_TIMEOUT_MS,
      );
      const done = (r: number | AgentFailure) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sup.stdout.destroy();
        sup.stderr.destroy();
        sup.unref();
        if (typeof r === 'number') resolve(r);
        else reject(r);
      };
      sup.on('error', (e) => done(new AgentFailure('Internal', `cannot start the session supervisor: ${e.message}`)));
      sup.stdin.on('error', () => {});
      sup.stdin.end(JSON.stringify({ env, python, ptyHelper: PTY_HELPER_SOURCE }));
      sup.stderr.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-2000)));
      sup.stdout.on('data', (b: Buffer) => {
        out += b.toString();
        const nl = out.indexOf('\n');
        if (nl < 0) {
          if (out.length > 65536) done(new AgentFailure('Internal', 'the session supervisor misbehaved'));
          return;
        }
        let report: { pid?: unknown; errno?: string; message?: string } = {};
        try {
          report = JSON.parse(out.slice(0, nl)) as typeof report;
        } catch {
          // reported below as a failed start
        }
        if (typeof report.pid === 'number') return done(report.pid);
        const cmd = JSON.stringify(argv0);
        if (report.errno === 'ENOENT') done(new AgentFailure('NotFound', `no command ${cmd} in the guest`));
        else if (report.errno === 'EACCES')
          done(new AgentFailure('FailedPrecondition', `${cmd} is not executable in the guest`));
        else done(new AgentFailure('Internal', `could not start ${cmd}: ${report.message ?? report.errno}`));
      });
      sup.on('exit', () =>
        setImmediate(() =>
          done(new AgentFailure('Internal', `the session supervisor exited at its start: ${err.trim()}`)),
        ),
      );
    });
  }
}
