import { homedir } from 'node:os';
import type { Readable } from 'node:stream';
import { BangerError, ErrorCode } from '../errors/index.js';
import type { ProgressEvent } from '../protocol/common.js';
import {
  SessionMethods,
  StatsMethods,
  type OutputStream,
  type SessionInfo,
  type SessionStartParams,
  type SessionStopResult,
  type VmStats,
} from '../protocol/session.js';
import { VmMethods, type VmCreateParams, type VmInfo, type VmSetParams, type VmSyncInfo } from '../protocol/vm.js';
import {
  WorkspaceMethods,
  type WorkspaceCompareResult,
  type WorkspaceExportResult,
  type WorkspacePrepareResult,
} from '../protocol/workspace.js';
import { Paths } from '../shared/paths.js';
import { BangerClient, type CallOptions } from './client.js';
import { execCollect, type ExecOptions, type ExecResult } from './exec.js';
import { connectOrStart } from './launcher.js';
import {
  sessionAttach,
  sessionLogs,
  sessionSend,
  type SessionAttachment,
  type SessionChunk,
  type SessionFrom,
  type SessionOutput,
} from './session.js';

/**
 * banger's TypeScript API: the same client the CLI uses. Every method takes `{ signal }` last (aborting
 * cancels the work in the daemon and rejects with a Cancelled BangerError); every failure is a BangerError
 * with the code the CLI maps to its exit code.
 */

export interface ConnectOptions {
  /** State directory; default BANGER_HOME as the CLI resolves it. */
  home?: string;
  /** The daemon's socket; default `<home>/bangerd.sock`. */
  socketPath?: string;
  /** Start bangerd (detached) when nobody answers; default true, false when only socketPath is given. */
  autoStart?: boolean;
  /** Told when a daemon had to be started. */
  onDaemonStart?: () => void;
  signal?: AbortSignal;
}

export interface Signalled {
  signal?: AbortSignal;
}
export interface WithProgressEvents extends Signalled {
  /** Progress of long work (image build, boot steps, transfer bytes). */
  onProgress?: (ev: ProgressEvent) => void;
}

export type VmCreateOptions = Omit<VmCreateParams, 'progressToken' | 'start'>;
export interface VmRunOptions extends VmCreateOptions {
  /** Run this in the VM once it is up; without it `run` returns once the VM is running. */
  argv?: string[];
  /** Options for the command (cwd, tty, stdin, output sinks). */
  exec?: Omit<ExecOptions, 'signal'>;
}
export interface VmRunResult {
  vm: VmInfo;
  /** The command's result, when argv was given. */
  exec?: ExecResult;
}

export type { ExecOptions, ExecResult, SessionAttachment, SessionChunk, SessionFrom, SessionOutput };
export type WorkspaceExport = Omit<WorkspaceExportResult, 'patch'> & { patch: Buffer };

/**
 * A session to start: `argv` (required), `name` (default: generated), `tty` and its `size`, `cwd`, `env`,
 * `maxOutputBytes` (per-stream cap on the output kept in the guest, default 64 MiB; later output is dropped
 * and `capped` says so).
 */
export type SessionStartOptions = Omit<SessionStartParams, 'vm'> & Signalled;

function callOpts(o: WithProgressEvents | undefined): CallOptions {
  return { signal: o?.signal, onProgress: o?.onProgress };
}

/** A connection to bangerd with typed methods per noun. Call `close()` when done. */
export class Banger {
  constructor(
    /** The underlying JSON-RPC client, for methods this API does not wrap. */
    readonly client: BangerClient,
  ) {}

  readonly vm = {
    /** Creates a VM (building the default image on first use); it stays stopped. */
    create: (params: VmCreateOptions = {}, o?: WithProgressEvents): Promise<VmInfo> =>
      this.client.call(VmMethods.create, { home: homedir(), ...params }, callOpts(o)),
    /** Boots a stopped VM; syncs your identity into it (see `sync`) unless `sync: false`. */
    start: (name: string, o?: WithProgressEvents & { sync?: boolean }): Promise<VmInfo> =>
      this.client.call(VmMethods.start, { name, ...(o?.sync === false ? { sync: false } : { home: homedir() }) }, callOpts(o)),
    /**
     * Copies your git identity, SSH public keys and config.json's `sync` files into a running VM again (every
     * start does it too). Says what was copied: paths and names, never contents.
     */
    sync: (name: string, o?: Signalled): Promise<VmSyncInfo> =>
      this.client.call(VmMethods.sync, { name, home: homedir() }, { signal: o?.signal }),
    /** Guest poweroff first, forced after `timeoutSeconds` (or at once with `force`). */
    stop: (name: string, o: Signalled & { force?: boolean; timeoutSeconds?: number } = {}): Promise<VmInfo> =>
      this.client.call(VmMethods.stop, { name, force: o.force, timeoutSeconds: o.timeoutSeconds }, o),
    /** Deletes a VM's processes, disks and keys; `force` stops a running one first. */
    delete: (name: string, o: Signalled & { force?: boolean } = {}): Promise<{ deleted: string }> =>
      this.client.call(VmMethods.delete, { name, force: o.force }, o),
    list: (o?: Signalled): Promise<VmInfo[]> => this.client.call(VmMethods.list, undefined, { signal: o?.signal }),
    show: (name: string, o?: Signalled): Promise<VmInfo> => this.client.call(VmMethods.show, { name }, { signal: o?.signal }),
    /**
     * Creates and boots a VM, then runs `argv` in it if given. With `rm` the VM is deleted when the command
     * ends, and by the daemon if this connection closes first.
     */
    run: async (params: VmRunOptions = {}, o?: WithProgressEvents): Promise<VmRunResult> => {
      const { argv, exec, ...create } = params;
      const vm = await this.client.call(VmMethods.create, { home: homedir(), ...create, start: true }, callOpts(o));
      if (!argv) return { vm };
      try {
        return { vm, exec: await execCollect(this.client, vm.name, argv, { ...exec, signal: o?.signal }) };
      } finally {
        if (params.rm) await this.deleteIfPresent(vm.name);
      }
    },
    /**
     * Changes a VM's CPUs, memory (applied at its next start) or work disk size (grown on a stopped VM only;
     * never shrunk).
     */
    set: (name: string, changes: Omit<VmSetParams, 'name'>, o?: Signalled): Promise<VmInfo> =>
      this.client.call(VmMethods.set, { name, ...changes }, { signal: o?.signal }),
    /** Runs a command in a running VM: `{ code, stdout, stderr }`; a non-zero code is a result, not an error. */
    exec: (name: string, argv: string[], o: ExecOptions = {}): Promise<ExecResult> => execCollect(this.client, name, argv, o),
  };

  readonly workspace = {
    /** Imports a host git checkout (tracked files; untracked with includeUntracked) into a running VM. */
    prepare: (
      vm: string,
      sourcePath: string,
      o: WithProgressEvents & { guestPath?: string; includeUntracked?: boolean } = {},
    ): Promise<WorkspacePrepareResult> =>
      this.client.call(
        WorkspaceMethods.prepare,
        { name: vm, sourcePath, guestPath: o.guestPath, includeUntracked: o.includeUntracked },
        callOpts(o),
      ),
    /** The guest's changes as a binary-safe patch (`git apply` at the host repo's top level) and file list. */
    export: async (vm: string, o: Signalled & { baseCommit?: string; nameOnly?: boolean } = {}): Promise<WorkspaceExport> => {
      const r = await this.client.call(WorkspaceMethods.export, { name: vm, baseCommit: o.baseCommit, nameOnly: o.nameOnly }, o);
      return { ...r, patch: Buffer.from(r.patch, 'base64') };
    },
    /**
     * Several VMs' workspaces side by side (forks running agents, say): per VM the changed files with lines
     * added and removed, and with `check` the exit code of that shell command run in each workspace at once.
     */
    compare: (
      vms: string[],
      o: Signalled & { check?: string; checkTimeoutSeconds?: number } = {},
    ): Promise<WorkspaceCompareResult> =>
      this.client.call(WorkspaceMethods.compare, { names: vms, check: o.check, checkTimeoutSeconds: o.checkTimeoutSeconds }, o),
  };

  readonly session = {
    /** Starts a process owned by the guest agent; returns at once. It outlives this connection. */
    start: (vm: string, o: SessionStartOptions): Promise<SessionInfo> => {
      const { signal, ...params } = o;
      return this.client.call(SessionMethods.start, { vm, ...params }, { signal });
    },
    list: (vm: string, o?: Signalled): Promise<SessionInfo[]> => this.client.call(SessionMethods.list, { vm }, { signal: o?.signal }),
    show: (vm: string, session: string, o?: Signalled): Promise<SessionInfo> =>
      this.client.call(SessionMethods.show, { vm, session }, { signal: o?.signal }),
    /** Writes to the session's stdin as is (add the newline yourself); a Readable is streamed. */
    send: (vm: string, session: string, data: string | Buffer | Readable, o?: Signalled): Promise<{ bytes: number }> =>
      sessionSend(this.client, vm, session, data, o),
    /** Exclusive attach: output from `from` on, stdin via write(); detach() leaves the session running. */
    attach: (
      vm: string,
      session: string,
      o: Signalled & { from?: SessionFrom; client?: string; onOutput?: (c: SessionChunk) => void } = {},
    ): SessionAttachment => sessionAttach(this.client, vm, session, o),
    /** Kept output as `{ stream, offset, data }` chunks; with `follow`, until the session ends or the signal aborts. */
    logs: (
      vm: string,
      session: string,
      o: Signalled & { from?: SessionFrom; stream?: OutputStream; follow?: boolean } = {},
    ): SessionOutput => sessionLogs(this.client, vm, session, o),
    /**
     * Ends a session: its process group gets `killSignal` (default SIGTERM), then SIGKILL if it has not ended within
     * `timeoutSeconds` (default 10); resolves with the ended session and `sent`, the signals sent (none when it had
     * already ended). `wait: false` only sends the signal.
     */
    stop: (
      vm: string,
      session: string,
      o: Signalled & { killSignal?: string; timeoutSeconds?: number; wait?: boolean } = {},
    ): Promise<SessionStopResult> =>
      this.client.call(
        SessionMethods.stop,
        { vm, session, signal: o.killSignal, timeoutSeconds: o.timeoutSeconds, wait: o.wait },
        { signal: o.signal },
      ),
    /** Removes an exited session and its kept output. */
    rm: (vm: string, session: string, o?: Signalled): Promise<{ removed: string }> =>
      this.client.call(SessionMethods.rm, { vm, session }, { signal: o?.signal }),
  };

  /** A running VM's CPU, memory, load, disks, network, uptime and sessions, from its guest agent. */
  stats(vm: string, o?: Signalled): Promise<VmStats> {
    return this.client.call(StatsMethods.vm, { name: vm }, { signal: o?.signal });
  }

  /** Closes the connection; a `vm.run({ rm: true })` VM still running is deleted by the daemon. */
  close(): Promise<void> {
    this.client.close();
    return Promise.resolve();
  }

  private async deleteIfPresent(name: string): Promise<void> {
    try {
      await this.client.call(VmMethods.delete, { name, force: true });
    } catch (e) {
      if (!(e instanceof BangerError && e.code === ErrorCode.NotFound)) throw e;
    }
  }
}

/** Connects to bangerd (BANGER_HOME as the CLI resolves it), starting it unless `autoStart: false`. */
export async function connect(opts: ConnectOptions = {}): Promise<Banger> {
  if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
  const paths = opts.home !== undefined ? new Paths(opts.home) : Paths.fromEnv();
  const socketPath = opts.socketPath ?? paths.socket;
  const autoStart = opts.autoStart ?? (opts.socketPath === undefined || opts.home !== undefined);
  const connecting = (
    autoStart && socketPath === paths.socket ? connectOrStart(paths, opts.onDaemonStart) : BangerClient.connect(socketPath)
  ).catch((e: NodeJS.ErrnoException) => {
    if (e instanceof BangerError) throw e;
    throw new BangerError(ErrorCode.Unavailable, `bangerd does not answer at ${socketPath}: ${e.code ?? e.message}`, {
      hint: autoStart ? 'see `banger daemon logs`' : 'start it with `banger daemon start`, or connect with autoStart',
      cause: e,
    });
  });
  const client = await abortable(connecting, opts.signal, (c) => c.close());
  return new Banger(client);
}

/** Rejects with Cancelled when the signal aborts first; a value that arrives later is disposed of. */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined, dispose: (v: T) => void): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      reject(new BangerError(ErrorCode.Cancelled, 'cancelled'));
      void p.then(dispose, () => undefined);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) dispose(v);
        else resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
