import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants as fsc, createReadStream } from 'node:fs';
import { access, mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BangerError, ErrorCode, cancelled } from '../../errors/index.js';
import type { Accel } from './driver.js';
import { qemuMachineArgs } from './qemu/argv.js';
import type { AccelChoice as RequestedAccelChoice } from '../../protocol/common.js';

/**
 * Whether KVM can run banger's guests on this host.
 *
 * An openable /dev/kvm is not enough: on nested or paravirtual hosts (PVM) the device opens, yet QEMU
 * aborts on an MSR write or the guest kernel hangs silently. So the verdict comes from a real boot: the
 * guest image's initrd prints PROBE_MARKER on the serial console and powers off when the kernel command
 * line carries `banger.probe=1`. The probe is slow (seconds), hence KvmProbeCache.
 */

export const PROBE_MARKER = 'BANGER-PROBE-OK';
export const PROBE_CMDLINE = 'console=ttyS0 banger.probe=1 panic=-1';

export interface KvmProbeResult {
  usable: boolean;
  /** Why, in words a person can act on. */
  reason: string;
}

export interface BootProbeOptions {
  binary: string;
  accel: Accel;
  kernelPath: string;
  initrdPath: string;
  /** Appended to PROBE_CMDLINE (e.g. the tsc_early_khz= options the VM cmdline carries). */
  extraCmdline?: string;
  /** Gives up on the marker after this long (default 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface BootProbeResult {
  /** The marker appeared on the serial console. */
  ok: boolean;
  /** What happened: "marker seen after N ms", "QEMU exited: <its stderr>", "no marker within N ms". */
  detail: string;
  elapsedMs: number;
}

export type BootProbe = (opts: BootProbeOptions) => Promise<BootProbeResult>;

export interface KvmProbeDeps {
  binary: string;
  kernelPath: string;
  initrdPath: string;
  extraCmdline?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Which accelerator the boot probe uses: 'kvm', except to check the probe machinery itself. */
  accel?: Accel;
  /** Default '/dev/kvm'. */
  kvmDevice?: string;
  /** Opens the device read-write and closes it; throws the errno error otherwise. */
  openDevice?: (path: string) => Promise<void>;
  bootProbe?: BootProbe;
}

async function openReadWrite(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.close();
}

/** Whether setpriv can tie the probe's QEMU to our life (it gets SIGKILL if the daemon dies mid-probe). */
let setprivPath: Promise<string | undefined> | undefined;
function findSetpriv(): Promise<string | undefined> {
  setprivPath ??= access('/usr/bin/setpriv', fsc.X_OK).then(
    () => '/usr/bin/setpriv',
    () => undefined,
  );
  return setprivPath;
}

/**
 * Boots `kernelPath` + `initrdPath` under `accel` with the console on a pipe and waits for PROBE_MARKER.
 * QEMU is killed in every outcome, and the promise settles only once it is gone.
 */
export const runBootProbe: BootProbe = async (opts) => {
  opts.signal?.throwIfAborted();
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const args = [
    ...qemuMachineArgs(opts.accel),
    '-smp',
    '1',
    '-m',
    '256',
    '-chardev',
    'stdio,id=con0,signal=off',
    '-serial',
    'chardev:con0',
    '-kernel',
    opts.kernelPath,
    '-initrd',
    opts.initrdPath,
    '-append',
    [PROBE_CMDLINE, opts.extraCmdline].filter(Boolean).join(' '),
  ];
  const setpriv = await findSetpriv();
  const [cmd, argv] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', opts.binary, ...args]] : [opts.binary, args];
  const started = Date.now();
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let serial = '';
  let stderr = '';
  let outcome: { ok: boolean; detail: string } | undefined;
  let aborted = false;

  return new Promise<BootProbeResult>((resolve, reject) => {
    const settle = (o: { ok: boolean; detail: string }) => {
      if (outcome) return;
      outcome = o;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    };
    const onAbort = () => {
      aborted = true;
      settle({ ok: false, detail: 'cancelled' });
    };
    const timer = setTimeout(
      () =>
        settle({
          ok: false,
          detail: `no ${PROBE_MARKER} on the serial console within ${timeoutMs} ms (the guest hangs)`,
        }),
      timeoutMs,
    );
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      serial = (serial + d).slice(-8192);
      if (serial.includes(PROBE_MARKER))
        settle({ ok: true, detail: `${PROBE_MARKER} seen after ${Date.now() - started} ms` });
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4096);
    });
    child.once('error', (err) => {
      settle({ ok: false, detail: `cannot run ${opts.binary}: ${err.message}` });
    });
    child.once('close', (code, sig) => {
      const tail = stderr.trim().split('\n').slice(-3).join(' / ');
      settle({
        ok: false,
        detail: `QEMU exited (${sig ? `signal ${sig}` : `exit code ${code}`}) before the guest printed ${PROBE_MARKER}${tail ? `: ${tail}` : ''}`,
      });
      const elapsedMs = Date.now() - started;
      if (aborted) reject(cancelled('the KVM probe was cancelled'));
      else resolve({ ...outcome!, elapsedMs });
    });
  });
};

/**
 * Decides whether KVM is usable: cheap checks on the device first, then a real boot under `-accel kvm`.
 * Never hangs (bounded by `timeoutMs`) and never leaves a QEMU process behind.
 */
export async function probeKvm(deps: KvmProbeDeps): Promise<KvmProbeResult> {
  const device = deps.kvmDevice ?? '/dev/kvm';
  const accel = deps.accel ?? 'kvm';
  if (accel === 'kvm') {
    try {
      await (deps.openDevice ?? openReadWrite)(device);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT')
        return {
          usable: false,
          reason: `${device} does not exist (virtualization is off in the firmware, the kvm module is not loaded, or this is a VM without nested virtualization)`,
        };
      if (code === 'EACCES' || code === 'EPERM')
        return {
          usable: false,
          reason: `${device} cannot be opened read-write by this user (add it to the 'kvm' group)`,
        };
      return { usable: false, reason: `${device} cannot be opened: ${(e as Error).message}` };
    }
  }
  const result = await (deps.bootProbe ?? runBootProbe)({
    binary: deps.binary,
    accel,
    kernelPath: deps.kernelPath,
    initrdPath: deps.initrdPath,
    extraCmdline: deps.extraCmdline,
    timeoutMs: deps.timeoutMs,
    signal: deps.signal,
  });
  return result.ok
    ? { usable: true, reason: `a test guest booted under ${accel} (${result.detail})` }
    : { usable: false, reason: `${device} opens but a test guest does not boot under ${accel}: ${result.detail}` };
}

/** What a user asks for: a fixed accelerator, or `auto` (probe KVM, fall back to TCG). */
export type RequestedAccel = RequestedAccelChoice;

export interface AccelChoice {
  accel: Accel;
  /** Something to tell the user about the choice (software emulation is slow), if anything. */
  notice?: string;
}

/**
 * Picks the accelerator for a VM. `probe` runs only when the answer depends on it ('auto' or 'kvm').
 * Forcing 'kvm' on a host where it does not work is an error rather than a VM that never boots.
 */
export async function resolveAccel(
  requested: RequestedAccel,
  probe: () => Promise<KvmProbeResult>,
): Promise<AccelChoice> {
  if (requested === 'tcg') return { accel: 'tcg' };
  const verdict = await probe();
  if (verdict.usable) return { accel: 'kvm' };
  if (requested === 'kvm')
    throw new BangerError(ErrorCode.FailedPrecondition, `KVM is not usable here: ${verdict.reason}`, {
      hint: 'use `--accel auto` (or `--accel tcg`) to run the VM with software emulation',
    });
  return {
    accel: 'tcg',
    notice: `KVM is not usable here (${verdict.reason}); using software emulation (TCG), expect slower VMs`,
  };
}

/** What a cached KVM verdict depends on: the answer changes when any of these does. */
export interface KvmProbeKey {
  /** `uname -r` of the host (os.release()). */
  hostKernel: string;
  /** First line of `qemu-system-x86_64 -version`. */
  qemuVersion: string;
  /** Identity of the guest kernel booted by the probe (see guestKernelId). */
  guestKernel: string;
}

/** sha256 of the guest kernel file, prefixed with its path for readability. */
export async function guestKernelId(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return `${path}@sha256:${hash.digest('hex')}`;
}

function keyString(k: KvmProbeKey): string {
  return JSON.stringify([k.hostKernel, k.qemuVersion, k.guestKernel]);
}

interface ProbeFile {
  kvm?: Record<string, KvmProbeResult & { probedAt: string }>;
  [other: string]: unknown;
}

/**
 * KVM verdicts in a JSON file shared with other host probes (Paths.probeCache), under its "kvm" key.
 * Writes are atomic (temp file + rename) and keep the file's other entries.
 */
export class KvmProbeCache {
  constructor(private readonly path: string) {}

  async get(key: KvmProbeKey): Promise<KvmProbeResult | undefined> {
    const entry = (await this.read()).kvm?.[keyString(key)];
    return entry ? { usable: entry.usable, reason: entry.reason } : undefined;
  }

  async set(key: KvmProbeKey, result: KvmProbeResult): Promise<void> {
    const file = await this.read();
    file.kvm = { ...file.kvm, [keyString(key)]: { ...result, probedAt: new Date().toISOString() } };
    await this.write(file);
  }

  /** Forgets every KVM verdict (e.g. `banger doctor --reprobe`). */
  async clear(): Promise<void> {
    const file = await this.read();
    if (!file.kvm) return;
    delete file.kvm;
    await this.write(file);
  }

  /** The cached verdict for `key`, or the result of `probe` (which is then cached). Cancellation is not cached. */
  async getOrProbe(key: KvmProbeKey, probe: () => Promise<KvmProbeResult>): Promise<KvmProbeResult> {
    const cached = await this.get(key);
    if (cached) return cached;
    const result = await probe();
    await this.set(key, result);
    return result;
  }

  private async write(file: ProbeFile): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.${process.pid}.tmp`;
    await writeFile(tmp, `${JSON.stringify(file, null, 2)}\n`);
    await rename(tmp, this.path);
  }

  private async read(): Promise<ProbeFile> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw e;
    }
    try {
      const parsed = JSON.parse(text) as unknown;
      return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as ProbeFile) : {};
    } catch {
      return {}; // a corrupt cache is only a cache: probe again and rewrite it
    }
  }
}
