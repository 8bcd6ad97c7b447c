import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, mkdir, open, rm, stat } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError, ErrorCode, cancelled, toBangerError } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type {
  DriverAvailability,
  LaunchHooks,
  LaunchSpec,
  PortForwarding,
  VmHandle,
  VmmDriver,
  VmmFeature,
} from '../driver.js';
import { isSameProcess, processStartTime, waitForProcessExit } from '../process.js';
import { qemuArgv, qemuNameOption } from './argv.js';
import { QmpClient } from './qmp.js';
import { loadDeferredState, qemuPausing, qemuSnapshots } from './snapshots.js';

/** The slice of a pino logger the driver uses. */
export interface VmmLog {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface QemuDriverDeps {
  /** Path of qemu-system-x86_64; found on PATH when omitted. */
  binary?: string;
  run: CommandRunner;
  log: VmmLog;
  /** Environment whose PATH is searched (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** How long launch waits for QMP to answer before giving up (default 30 s). */
  launchTimeoutMs?: number;
  /** TCG's translated-code cache in MiB (config.json `qemu.tcgCacheMib`); QEMU's default when omitted. */
  tcgCacheMib?: number;
}

export const QEMU_BINARY = 'qemu-system-x86_64';
const INSTALL_HINT = 'install it with `apt-get install qemu-system-x86 qemu-utils`';

/** Last `maxLines` lines of a file from byte `from` on ('' if unreadable). */
export async function readTail(path: string, from = 0, maxLines = 20): Promise<string> {
  try {
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      const start = Math.max(from, size - 64 * 1024);
      const buf = Buffer.alloc(Math.max(0, size - start));
      await fh.read(buf, 0, buf.length, start);
      return buf.toString('utf8').trim().split('\n').slice(-maxLines).join('\n');
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}

/** Finds an executable named `name` on `PATH`. */
export async function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  for (const dir of (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      await access(candidate, fsc.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

function pidGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Runs VMs under QEMU's `microvm` machine, KVM or TCG.
 *
 * QEMU is spawned detached (own session, stdio to vmm.log, unref'd) so it outlives the daemon; a restarted
 * daemon finds it again through the handle (pid + start time + the VM id in its argv).
 */
export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const;
  readonly features: ReadonlySet<VmmFeature> = new Set<VmmFeature>([
    'qcow2',
    'userNetworking',
    'tap',
    'virtioSerial',
    'tcg',
    'bzImage',
  ]);
  /** Exit events of the QEMU processes this daemon spawned: faster than polling /proc, and no zombie wait. */
  private readonly children = new Map<number, Promise<void>>();
  private resolvedBinary: string | undefined;
  private versionText: string | undefined;

  constructor(private readonly deps: QemuDriverDeps) {
    this.snapshots = qemuSnapshots(deps.run);
  }

  /** QEMU's `-version` first line, once availability() succeeded (used to key cached probes). */
  get version(): string | undefined {
    return this.versionText;
  }

  async availability(signal?: AbortSignal): Promise<DriverAvailability> {
    const binary = await this.findBinary();
    if (!binary)
      return {
        ok: false,
        reason: this.deps.binary
          ? `${this.deps.binary} is not an executable file: fix the configured QEMU path or ${INSTALL_HINT}`
          : `${QEMU_BINARY} is not installed (not on PATH): ${INSTALL_HINT}`,
      };
    // A guard against a hung binary, not a speed check: a cold start (page cache reclaimed, a busy host)
    // was seen to take over 5 s here.
    const timeout = AbortSignal.timeout(30_000);
    const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      const res = await this.deps.run(binary, ['-version'], { signal: combined, allowFailure: true });
      const first = res.stdout.trim().split('\n')[0] ?? '';
      if (res.code !== 0 || !/QEMU emulator version/.test(first))
        return {
          ok: false,
          reason: `${binary} -version failed (exit ${res.code}): ${(res.stderr || res.stdout).trim().slice(0, 300)}; reinstall: ${INSTALL_HINT}`,
        };
      this.resolvedBinary = binary;
      this.versionText = first;
      return { ok: true, binary };
    } catch (e) {
      if (signal?.aborted) throw cancelled();
      return {
        ok: false,
        reason: `${binary} -version did not answer (${toBangerError(e).message}); reinstall: ${INSTALL_HINT}`,
      };
    }
  }

  controlSocketPath(vp: { qmpSocket: string }): string {
    return vp.qmpSocket;
  }

  async launch(spec: LaunchSpec, signal?: AbortSignal, hooks?: LaunchHooks): Promise<VmHandle> {
    signal?.throwIfAborted();
    const binary = this.resolvedBinary ?? (await this.findBinary());
    if (!binary)
      throw new BangerError(ErrorCode.FailedPrecondition, `${QEMU_BINARY} is not installed`, { hint: INSTALL_HINT });
    const argv = qemuArgv(spec, { tcgCacheMib: this.deps.tcgCacheMib });

    // A stale socket from an earlier run would make us talk to nothing (or to another QEMU).
    await rm(spec.controlSocketPath, { force: true });
    if (spec.channelSocketPath) await rm(spec.channelSocketPath, { force: true });
    if (spec.bulkSocketPath) await rm(spec.bulkSocketPath, { force: true });
    await mkdir(dirname(spec.vmmLogPath), { recursive: true });
    const logFh = await open(spec.vmmLogPath, 'a');
    let child: ChildProcess;
    let logStart: number;
    try {
      await logFh.write(`--- ${new Date().toISOString()} ${binary} ${argv.join(' ')}\n`);
      // Error tails show only what QEMU itself wrote during this launch.
      logStart = (await logFh.stat()).size;
      child = spawn(binary, argv, { detached: true, stdio: ['ignore', logFh.fd, logFh.fd] });
    } finally {
      await logFh.close();
    }
    child.unref();
    let exitInfo: { code: number | null; sig: NodeJS.Signals | null } | undefined;
    let spawnError: Error | undefined;
    const exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        exitInfo = { code, sig };
        resolve();
      });
      child.once('error', (err) => {
        spawnError = err;
        resolve();
      });
    });
    const pid = child.pid;
    if (pid === undefined) {
      await exited;
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `cannot start ${binary}: ${spawnError?.message ?? 'unknown error'}`,
        {
          hint: INSTALL_HINT,
        },
      );
    }
    this.children.set(pid, exited);
    void exited.then(() => this.children.delete(pid));
    const startTime = await processStartTime(pid);
    const handle: VmHandle = {
      vmm: 'qemu',
      pid,
      startTime: startTime ?? -1,
      accel: spec.accel,
      controlSocketPath: spec.controlSocketPath,
      ...(spec.bulkSocketPath !== undefined && spec.channelSocketPath !== undefined ? { bulkSocketPath: spec.bulkSocketPath } : {}),
    };
    this.deps.log.info({ vmId: spec.vmId, pid, accel: spec.accel }, 'qemu started');
    try {
      if (hooks?.onSpawned) await hooks.onSpawned(handle);
    } catch (e) {
      await this.killPid(pid, 0).catch(() => {});
      throw e;
    }

    const earlyExit = async (): Promise<BangerError> => {
      const tail = await readTail(spec.vmmLogPath, logStart);
      const how = exitInfo?.sig ? `signal ${exitInfo.sig}` : `exit code ${exitInfo?.code ?? '?'}`;
      return new BangerError(
        ErrorCode.FailedPrecondition,
        `QEMU exited while starting VM '${spec.name}' (${how}):\n${tail}`,
        {
          hint: `the full output is in ${spec.vmmLogPath}`,
        },
      );
    };

    const deadline = Date.now() + (this.deps.launchTimeoutMs ?? 30_000);
    let delay = 10;
    let lastError: unknown;
    try {
      for (;;) {
        if (exitInfo) throw await earlyExit();
        signal?.throwIfAborted();
        if (Date.now() > deadline) {
          const tail = await readTail(spec.vmmLogPath, logStart);
          throw new BangerError(
            ErrorCode.DeadlineExceeded,
            `QEMU for VM '${spec.name}' did not answer on its control socket within ${this.deps.launchTimeoutMs ?? 30_000} ms` +
              (lastError ? ` (${toBangerError(lastError).message})` : '') +
              (tail ? `:\n${tail}` : ''),
            { hint: `the full output is in ${spec.vmmLogPath}` },
          );
        }
        try {
          const st = await stat(spec.controlSocketPath).catch(() => undefined);
          if (st?.isSocket()) {
            const qmp = await QmpClient.connect(spec.controlSocketPath, { signal, timeoutMs: 5000 });
            try {
              await qmp.execute('query-status', undefined, { signal, timeoutMs: 5000 });
            } finally {
              qmp.close();
            }
            break;
          }
        } catch (e) {
          if (signal?.aborted) throw e;
          lastError = e;
        }
        await Promise.race([exited, sleep(delay, undefined, { signal })]);
        delay = Math.min(delay * 2, 200);
      }
      if (handle.startTime === -1) throw await earlyExit();
      if (spec.incoming?.ram === 'file') await loadDeferredState(spec.controlSocketPath, spec.incoming, signal);
      return handle;
    } catch (e) {
      await this.killPid(pid, 0).catch(() => {});
      if (signal?.aborted) throw cancelled(`starting VM '${spec.name}' was cancelled; its QEMU process was stopped`);
      throw e;
    }
  }

  async isAlive(handle: VmHandle, vmId: string): Promise<boolean> {
    return isSameProcess(handle.pid, handle.startTime, qemuNameOption(vmId));
  }

  async waitExit(handle: VmHandle, signal?: AbortSignal): Promise<void> {
    // Holding the QMP socket open to learn of the exit would lock other QMP users out (one client per
    // monitor), so an adopted process is polled; our own child's exit event ends the wait at once.
    const poll = new AbortController();
    const combined = signal ? AbortSignal.any([signal, poll.signal]) : poll.signal;
    const waits: Promise<void>[] = [waitForProcessExit(handle.pid, handle.startTime, combined, 100)];
    const own = this.children.get(handle.pid);
    if (own) waits.push(own);
    try {
      await Promise.race(waits);
    } catch (e) {
      if (signal?.aborted) throw cancelled('waiting for the VM to exit was cancelled');
      throw e;
    } finally {
      poll.abort();
    }
    // Silence the poller's AbortError after the race settled.
    await Promise.allSettled(waits);
  }

  /**
   * Presses the ACPI power button (QMP `system_powerdown`). Only a guest whose init handles the button
   * (systemd, acpid) shuts down; a bare shell PID 1 ignores it, so callers follow up with kill().
   */
  async requestShutdown(handle: VmHandle, signal?: AbortSignal): Promise<void> {
    const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
    try {
      await qmp.execute('system_powerdown', undefined, { signal, timeoutMs: 5000 });
    } finally {
      qmp.close();
    }
  }

  /** Runtime forwards through HMP `hostfwd_add` / `hostfwd_remove` on the user-mode netdev `n0`. */
  readonly portForwarding: PortForwarding = {
    addForward: (h, f, signal) => this.hmp(h, `hostfwd_add n0 tcp:${f.hostAddress}:${f.hostPort}-:${f.guestPort}`, signal),
    removeForward: (h, f, signal) => this.hmp(h, `hostfwd_remove n0 tcp:${f.hostAddress}:${f.hostPort}`, signal),
  };

  readonly snapshots: ReturnType<typeof qemuSnapshots>;
  readonly pausing = qemuPausing();

  /** Runs a human-monitor command; HMP reports failures as text, which becomes an error here. */
  private async hmp(handle: VmHandle, commandLine: string, signal?: AbortSignal): Promise<void> {
    const qmp = await QmpClient.connect(handle.controlSocketPath, { signal, timeoutMs: 5000 });
    try {
      const out = await qmp.execute<string>('human-monitor-command', { 'command-line': commandLine }, { signal, timeoutMs: 5000 });
      if (typeof out === 'string' && out.trim() !== '')
        throw new BangerError(ErrorCode.FailedPrecondition, `qemu refused \`${commandLine}\`: ${out.trim()}`);
    } finally {
      qmp.close();
    }
  }

  async kill(handle: VmHandle, graceMs = 3000): Promise<void> {
    if ((await processStartTime(handle.pid)) !== handle.startTime) return;
    await this.killPid(handle.pid, graceMs, handle.startTime);
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. Checks identity before each signal. */
  private async killPid(pid: number, graceMs: number, startTime?: number): Promise<void> {
    const same = async () => {
      const st = await processStartTime(pid);
      return st !== undefined && (startTime === undefined || st === startTime);
    };
    const gone = async (ms: number) => {
      const until = Date.now() + ms;
      const own = this.children.get(pid);
      while (Date.now() < until) {
        if (!(await same()) || pidGone(pid)) return true;
        await Promise.race([own ?? sleep(25), sleep(25)]);
      }
      return !(await same());
    };
    const signal = (sig: NodeJS.Signals) => {
      try {
        process.kill(pid, sig);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      }
    };
    if (!(await same())) return;
    if (graceMs > 0) {
      signal('SIGTERM');
      if (await gone(graceMs)) return;
      this.deps.log.warn({ pid, graceMs }, 'qemu ignored SIGTERM; sending SIGKILL');
    }
    if (!(await same())) return;
    signal('SIGKILL');
    if (await gone(10_000)) return;
    throw new BangerError(ErrorCode.Internal, `QEMU process ${pid} survived SIGKILL for 10 s`, {
      hint: `check \`ps -o pid,stat,cmd -p ${pid}\`; a process stuck in the kernel (state D) needs the host to recover`,
    });
  }

  private async findBinary(): Promise<string | undefined> {
    if (this.deps.binary) {
      try {
        await access(this.deps.binary, fsc.X_OK);
        return this.deps.binary;
      } catch {
        return undefined;
      }
    }
    return findOnPath(QEMU_BINARY, this.deps.env);
  }
}
