/**
 * The Firecracker VMM driver: starts `firecracker --api-sock <sock> --id <vmId>` detached, configures the VM
 * through the API (config.ts builds the requests) and boots it with InstanceStart. The guest agent is reached
 * over the VM's vsock device (`connectAgent`).
 */
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, open, readFile, rm, stat } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode, toBangerError } from '../../../errors/index.js';
import { AGENT_VSOCK_PORT } from '../../../protocol/agent.js';
import { connectVsock, type VsockConnectOptions } from '../../guest/vsock.js';
import type { DriverAvailability, LaunchHooks, LaunchSpec, VmHandle, VmmDriver, VmmFeature, VmmPausing, VmmSnapshots } from '../driver.js';
import { isSameProcess, processStartTime, waitForProcessExit } from '../process.js';
import { FirecrackerApi } from './api.js';
import { INSTANCE_START, firecrackerArgv, firecrackerLoadRequest, firecrackerRequests } from './config.js';
import { SNAPSHOT_TIMEOUT_MS, firecrackerSnapshots } from './snapshots.js';
import { checkFirecrackerKernel } from '../vmlinux.js';

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

/** The part of a pino logger the driver uses. */
export interface DriverLog {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface FirecrackerDriverDeps {
  /** The firecracker binary: a path, or a name searched on PATH. Default `firecracker`. */
  binary?: string;
  /** Arguments placed before Firecracker's own (runs a script fake as `node --import tsx fake.ts ...`). */
  binaryArgs?: readonly string[];
  /** Environment of the VMM process (and the PATH searched for `binary`). Default process.env. */
  env?: NodeJS.ProcessEnv;
  spawn?: SpawnFn;
  /** The KVM device availability() checks. Default /dev/kvm. */
  kvmDevice?: string;
  /** How long launch waits for the API socket to answer. Default 5000 ms. */
  apiReadyTimeoutMs?: number;
  /** Per-request timeout of API calls. Default 15000 ms. */
  apiRequestTimeoutMs?: number;
  log?: DriverLog;
}

const noopLog: DriverLog = { info: () => undefined, warn: () => undefined };

/** First bytes of a qcow2 image ("QFI\xfb"). */
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker' as const;
  readonly features: ReadonlySet<VmmFeature> = new Set<VmmFeature>(['tap', 'vsock']);

  private readonly binary: string;
  private readonly binaryArgs: readonly string[];
  private readonly env: NodeJS.ProcessEnv;
  private readonly spawn: SpawnFn;
  private readonly kvmDevice: string;
  private readonly apiReadyTimeoutMs: number;
  private readonly apiRequestTimeoutMs: number;
  private readonly log: DriverLog;

  constructor(deps: FirecrackerDriverDeps = {}) {
    this.binary = deps.binary ?? 'firecracker';
    this.binaryArgs = deps.binaryArgs ?? [];
    this.env = deps.env ?? process.env;
    this.spawn = deps.spawn ?? nodeSpawn;
    this.kvmDevice = deps.kvmDevice ?? '/dev/kvm';
    this.apiReadyTimeoutMs = deps.apiReadyTimeoutMs ?? 5000;
    this.apiRequestTimeoutMs = deps.apiRequestTimeoutMs ?? 15_000;
    this.log = deps.log ?? noopLog;
  }

  async availability(signal?: AbortSignal): Promise<DriverAvailability> {
    signal?.throwIfAborted();
    const binary = await this.resolveBinary();
    if (!binary)
      return {
        ok: false,
        reason:
          `${this.binary} was not found${this.binary.includes('/') ? '' : ' on PATH'}: install a Firecracker release ` +
          '(github.com/firecracker-microvm/firecracker/releases, x86_64 build) and put `firecracker` on PATH, or use the qemu driver',
      };
    try {
      await access(this.kvmDevice, fsConstants.R_OK | fsConstants.W_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return {
        ok: false,
        binary,
        reason:
          code === 'ENOENT'
            ? `${this.kvmDevice} does not exist: Firecracker needs KVM; enable hardware virtualization (nested ` +
              'virtualization when this host is itself a VM), or use the qemu driver (TCG)'
            : `${this.kvmDevice} is not readable and writable by this user: add the user to the kvm group ` +
              '(`sudo usermod -aG kvm $USER`, then log in again) or run bangerd as root',
      };
    }
    return { ok: true, binary };
  }

  controlSocketPath(vp: { apiSocket: string }): string {
    return vp.apiSocket;
  }

  async launch(spec: LaunchSpec, signal?: AbortSignal, hooks?: LaunchHooks): Promise<VmHandle> {
    // Everything that can be refused is refused before a process exists. A saved guest is resumed with one
    // request in place of the boot's configuration and InstanceStart.
    const requests = spec.incoming ? [firecrackerLoadRequest(spec)] : [...firecrackerRequests(spec), INSTANCE_START];
    const argv = firecrackerArgv(spec);
    await checkFirecrackerKernel(spec.kernelPath);
    await checkDisks(spec);
    const availability = await this.availability(signal);
    if (!availability.ok || !availability.binary)
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `cannot start Firecracker: ${availability.reason ?? 'unavailable'}`,
      );

    // Firecracker refuses to start when its API socket exists, and fails the vsock request when the vsock
    // socket exists: both are leftovers of an earlier run of this VM.
    await rm(spec.controlSocketPath, { force: true });
    if (spec.channelSocketPath !== undefined) await rm(spec.channelSocketPath, { force: true });
    await (await open(spec.consoleLogPath, 'a')).close();

    const logFile = await open(spec.vmmLogPath, 'a');
    let child: ChildProcess;
    try {
      // detached: its own session, so the VMM outlives a daemon killed with SIGKILL (and its terminal).
      child = this.spawn(availability.binary, [...this.binaryArgs, ...argv], {
        detached: true,
        // The VM's directory: its disks and console are given by relative names (config.ts inWorkDir).
        ...(spec.workDir !== undefined ? { cwd: spec.workDir } : {}),
        stdio: ['ignore', logFile.fd, logFile.fd],
        env: this.env,
      });
    } finally {
      await logFile.close();
    }
    const exited = watchExit(child);
    child.unref();

    const pid = child.pid;
    if (pid === undefined) {
      const err = await exited.promise;
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `cannot start ${availability.binary}: ${err.error?.message ?? 'spawn failed'}`,
      );
    }
    const startTime = await processStartTime(pid);
    const handle: VmHandle = {
      vmm: 'firecracker',
      pid,
      startTime: startTime ?? 0,
      accel: 'kvm',
      controlSocketPath: spec.controlSocketPath,
    };
    this.log.info({ vmId: spec.vmId, pid }, 'firecracker started');

    const api = new FirecrackerApi(spec.controlSocketPath, { timeoutMs: this.apiRequestTimeoutMs });
    try {
      if (startTime === undefined) throw await this.exitedEarly(spec, exited);
      if (hooks?.onSpawned) await hooks.onSpawned(handle);
      await this.waitForApi(api, spec, exited, signal);
      // Loading a snapshot reads the whole state and maps the memory file: more than a config request's time.
      for (const req of requests) await api.send(req, signal, req.path === '/snapshot/load' ? SNAPSHOT_TIMEOUT_MS : undefined);
    } catch (e) {
      const err = exited.state ? await this.exitedEarly(spec, exited) : toBangerError(e);
      this.log.warn({ vmId: spec.vmId, pid, err: err.message }, 'firecracker launch failed; killing it');
      if (!exited.state) await this.kill(handle, 0).catch(() => undefined);
      await rm(spec.controlSocketPath, { force: true });
      throw new BangerError(err.code, err.message, {
        hint: err.hint ?? `Firecracker's own log: ${spec.vmmLogPath}`,
        cause: e,
      });
    }
    return handle;
  }

  /**
   * The guest agent over vsock: Firecracker listens on the vsock device's `uds_path` (the channel socket) once
   * the VM started, and forwards `CONNECT AGENT_VSOCK_PORT` to the agent's vsock listener in the guest.
   */
  connectAgent(channelSocketPath: string, opts: VsockConnectOptions = {}): Promise<Socket> {
    return connectVsock(channelSocketPath, AGENT_VSOCK_PORT, opts);
  }

  isAlive(handle: VmHandle, vmId: string): Promise<boolean> {
    return isSameProcess(handle.pid, handle.startTime, vmId);
  }

  async waitExit(handle: VmHandle, signal?: AbortSignal): Promise<void> {
    try {
      await waitForProcessExit(handle.pid, handle.startTime, signal);
    } catch (e) {
      throw toBangerError(e);
    }
  }

  /** `PATCH /vm` with `Paused` / `Resumed`: the guest's vCPUs stop where they are and start again. */
  readonly pausing: VmmPausing = {
    pause: (handle, signal) => this.patchVm(handle, 'Paused', signal),
    resume: (handle, signal) => this.patchVm(handle, 'Resumed', signal),
  };

  /** Snapshots through the API (snapshots.ts): Full, memory in a file, disks copied by the caller. */
  readonly snapshots: VmmSnapshots = firecrackerSnapshots(
    (handle) => new FirecrackerApi(handle.controlSocketPath, { timeoutMs: this.apiRequestTimeoutMs }),
  );

  private async patchVm(handle: VmHandle, state: 'Paused' | 'Resumed', signal?: AbortSignal): Promise<void> {
    const api = new FirecrackerApi(handle.controlSocketPath, { timeoutMs: this.apiRequestTimeoutMs });
    await api.call('PATCH', '/vm', { state }, signal);
  }

  /** Sends Ctrl-Alt-Del (x86 only): the guest's init reboots, and with `reboot=k` Firecracker then exits. */
  async requestShutdown(handle: VmHandle, signal?: AbortSignal): Promise<void> {
    const api = new FirecrackerApi(handle.controlSocketPath, { timeoutMs: this.apiRequestTimeoutMs });
    await api.action('SendCtrlAltDel', signal);
  }

  async kill(handle: VmHandle, graceMs = 5000): Promise<void> {
    if ((await processStartTime(handle.pid)) !== handle.startTime) return;
    if (graceMs > 0) {
      signalProcess(handle.pid, 'SIGTERM');
      const gone = await waitForProcessExit(handle.pid, handle.startTime, AbortSignal.timeout(graceMs), 20).then(
        () => true,
        () => false,
      );
      if (gone) return;
    }
    // Check again just before SIGKILL: the pid must still be the same process.
    if ((await processStartTime(handle.pid)) !== handle.startTime) return;
    signalProcess(handle.pid, 'SIGKILL');
    await waitForProcessExit(handle.pid, handle.startTime, undefined, 20);
  }

  /** Polls `GET /` until the API answers; fails early if the process exits. */
  private async waitForApi(
    api: FirecrackerApi,
    spec: LaunchSpec,
    exited: ExitWatch,
    signal?: AbortSignal,
  ): Promise<void> {
    const deadline = Date.now() + this.apiReadyTimeoutMs;
    for (;;) {
      signal?.throwIfAborted();
      if (exited.state) throw await this.exitedEarly(spec, exited);
      try {
        await api.describeInstance(signal, 1000);
        return;
      } catch (e) {
        if (e instanceof BangerError && e.code !== ErrorCode.Unavailable && e.code !== ErrorCode.DeadlineExceeded)
          throw e;
      }
      if (Date.now() >= deadline)
        throw new BangerError(
          ErrorCode.DeadlineExceeded,
          `Firecracker's API socket ${spec.controlSocketPath} did not answer within ${this.apiReadyTimeoutMs} ms`,
        );
      await sleep(20, undefined, { signal });
    }
  }

  private async exitedEarly(spec: LaunchSpec, exited: ExitWatch): Promise<BangerError> {
    const st = await exited.promise;
    const how = st.error ? st.error.message : st.signal ? `killed by ${st.signal}` : `exit code ${st.code ?? '?'}`;
    const tail = await logTail(spec.vmmLogPath);
    return new BangerError(
      ErrorCode.FailedPrecondition,
      `Firecracker exited during launch (${how})${tail ? `:\n${tail}` : ''}`,
      { hint: `Firecracker's own log: ${spec.vmmLogPath}` },
    );
  }

  private async resolveBinary(): Promise<string | undefined> {
    const candidates = this.binary.includes('/')
      ? [this.binary]
      : (this.env.PATH ?? '')
          .split(delimiter)
          .filter((d) => d !== '')
          .map((d) => join(d, this.binary));
    for (const c of candidates) {
      try {
        await access(c, fsConstants.X_OK);
        if ((await stat(c)).isFile()) return c;
      } catch {
        // not here
      }
    }
    return undefined;
  }
}

interface ExitState {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

interface ExitWatch {
  /** Set once the child exited or failed to spawn. */
  state: ExitState | undefined;
  promise: Promise<ExitState>;
}

function watchExit(child: ChildProcess): ExitWatch {
  const watch: ExitWatch = { state: undefined, promise: Promise.resolve({ code: null, signal: null }) };
  watch.promise = new Promise<ExitState>((resolve) => {
    child.once('exit', (code, signal) => {
      watch.state = { code, signal };
      resolve(watch.state);
    });
    child.once('error', (error) => {
      watch.state = { code: null, signal: null, error };
      resolve(watch.state);
    });
  });
  return watch;
}

function signalProcess(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

async function logTail(path: string, lines = 15): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Disks must exist, and a disk declared raw must not be a qcow2 file (Firecracker would hand the guest garbage). */
async function checkDisks(spec: LaunchSpec): Promise<void> {
  for (const disk of spec.disks) {
    let head: Buffer;
    try {
      const fh = await open(disk.path, 'r');
      try {
        head = Buffer.alloc(4);
        await fh.read(head, 0, 4, 0);
      } finally {
        await fh.close();
      }
    } catch (e) {
      throw new BangerError(
        ErrorCode.NotFound,
        `disk '${disk.id}' (${disk.path}) cannot be opened: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    if (head.equals(QCOW2_MAGIC))
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `disk '${disk.id}' (${disk.path}) is a qcow2 file; Firecracker reads raw disks only`,
        {
          hint: 'convert it (`qemu-img convert -O raw`) or use the qemu driver',
        },
      );
  }
}
