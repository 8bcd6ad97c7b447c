import { readdir, rm, stat } from 'node:fs/promises';
import type { Paths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import type { VmRepo } from '../../store/repos/vms.js';
import type { DriverRegistry } from '../../vmm/driver.js';
import { processArgv, processStartTime } from '../../vmm/process.js';
import type { TapNetworking } from './boot.js';
import type { GuestPortForwarder } from './forwards.js';
import { readHandles, removeRuntimeFiles } from './handles.js';
import { newLiveVm, runtimeFiles, type LiveVms } from './live.js';

/** A process on this host, as reconcile sees it. */
export interface HostProcess {
  pid: number;
  argv: string[];
}

/** Every process of this host that can be read (/proc). */
export async function listProcesses(): Promise<HostProcess[]> {
  const out: HostProcess[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const argv = await processArgv(Number(e));
    if (argv) out.push({ pid: Number(e), argv });
  }
  return out;
}

export interface VmReconcileDeps {
  paths: Paths;
  vms: VmRepo;
  drivers: DriverRegistry;
  live: LiveVms;
  forwarder: GuestPortForwarder;
  tap: TapNetworking;
  log: Logger;
  /** The host's processes (injected for tests). */
  processes?: () => Promise<HostProcess[]>;
  /** Ends a process: SIGTERM, then SIGKILL (injected for tests). */
  killProcess?: (pid: number) => Promise<void>;
}

/**
 * Makes records agree with reality after a daemon (re)start, whatever instant the last daemon died at:
 * - a VM recorded as running whose VMM process is alive is adopted;
 * - a VMM process of a VM caught mid-boot or mid-stop is ended and the VM recorded as stopped;
 * - a VMM process started from this state directory that no record owns (a daemon killed between spawning
 *   it and recording it, or during a delete) is killed;
 * - a create that never finished (no host key yet) is removed, record and files;
 * - a VM directory without a record is removed; a record whose directory is gone (a delete that did not
 *   finish) is removed.
 */
export async function reconcileVms(d: VmReconcileDeps): Promise<void> {
  const kill = d.killProcess ?? killProcess;
  const owned = new Map<number, string>(); // pid -> VM id of adopted VMMs
  for (const vm of d.vms.list()) {
    const vp = d.paths.vm(vm.id);
    if (!(await exists(vp.dir)) || (vm.state === 'created' && !(await exists(vp.knownHosts)))) {
      await rm(vp.dir, { recursive: true, force: true });
      if (vm.networkMode === 'tap') await d.tap.detach(vm.id).catch(() => undefined);
      d.vms.delete(vm.id);
      d.log.warn({ vm: vm.name }, 'removed a VM whose create or delete did not finish');
      continue;
    }
    const handle = await readHandles(vp.handles);
    const driver = d.drivers.get(vm.vmm);
    const alive = handle !== undefined && driver !== undefined && (await driver.isAlive(handle, vm.id));
    if (alive && vm.state === 'running') {
      const live = newLiveVm(handle, driver);
      d.live.add(vm.id, live);
      owned.set(handle.pid, vm.id);
      d.forwarder.start(vm, live);
      d.log.info({ vm: vm.name, pid: handle.pid }, 'adopted running vm');
      continue;
    }
    if (alive) {
      // Caught mid-boot or mid-stop: nobody waits for that boot any more, and a stop wanted it gone.
      await driver.kill(handle, 3000).catch(() => undefined);
      d.log.warn({ vm: vm.name, pid: handle.pid, state: vm.state }, 'ended a VMM process left mid-boot or mid-stop');
    }
    await removeRuntimeFiles(runtimeFiles(vp));
    if (vm.state === 'running' || vm.state === 'starting' || vm.state === 'stopping') {
      const lastError =
        vm.state === 'running'
          ? 'its VMM process ended while bangerd was not running'
          : vm.state === 'starting'
            ? 'bangerd stopped while the VM was booting; start it again'
            : vm.lastError;
      d.vms.update(vm.id, { state: 'stopped', lastError });
      d.log.info({ vm: vm.name }, 'vm marked stopped: no live process');
    }
  }

  // VMM processes of this state directory that no record owns.
  const marker = d.paths.vmsDir + '/';
  for (const p of await (d.processes ?? listProcesses)()) {
    if (owned.has(p.pid) || p.pid === process.pid) continue;
    if (!p.argv.some((a) => a.includes(marker))) continue;
    if (!/qemu-system|firecracker/.test(p.argv[0] ?? '')) continue;
    d.log.warn({ pid: p.pid, argv0: p.argv[0] }, 'killing a VMM process that no VM record owns');
    await kill(p.pid).catch(() => undefined);
  }

  // Directories of VMs that have no record.
  const ids = new Set(d.vms.list().map((v) => v.id));
  for (const e of await readdir(d.paths.vmsDir).catch(() => [] as string[])) {
    if (ids.has(e)) continue;
    await rm(d.paths.vmDir(e), { recursive: true, force: true });
    d.log.warn({ dir: d.paths.vmDir(e) }, 'removed a VM directory that has no record');
  }

  const tapVms = d.vms.list().filter((v) => v.networkMode === 'tap');
  if (tapVms.length > 0) {
    await d.tap
      // Stopped VMs keep their tap and address; only what deleted VMs left behind goes.
      .reconcile(new Set(tapVms.map((v) => v.id)))
      .catch((e: unknown) => d.log.warn({ err: (e as Error).message }, 'tap network reconcile failed'));
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** SIGTERM, then SIGKILL after 3 s; resolves once the process is gone. */
export async function killProcess(pid: number): Promise<void> {
  const start = await processStartTime(pid);
  if (start === undefined) return;
  const gone = async () => (await processStartTime(pid)) !== start;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 30; i++) {
    if (await gone()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 30 && !(await gone()); i++) await new Promise((r) => setTimeout(r, 100));
}
