import { posix } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { failedPrecondition } from '../../../errors/index.js';
import type { VmPorts, VmSyncInfo } from '../../../protocol/vm.js';
import type { VmStats } from '../../../protocol/session.js';
import type { Paths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import { shJoin, shq } from '../../guest/shell.js';
import { cdToWorkspace, execInWorkspace } from '../workspace/workspace-command.js';
import type { GuestExecOptions, GuestSession } from '../../guest/session.js';
import { AgentFirstSession, AgentGuestSession, GUEST_HOME, agentFailedBeforeStart } from '../../guest/agent-session.js';
import { BulkStdinSession } from '../../guest/bulk.js';
import { applyIdentity, PRESPAWNED_IDENTITY } from '../../guest/identity.js';
import type { VmRecord, VmRepo } from '../../store/repos/vms.js';
import type { IdentitySync } from '../sync/service.js';
import { GuestPortForwarder } from './forwards.js';
import { GuestPortProxy } from './port-proxy.js';
import { listGuestPorts } from './guest-ports.js';
import type { LiveVms } from './live.js';

/**
 * Access to the guests of running VMs: commands (`vm exec`, through the guest agent or over SSH), the
 * agent itself (sessions, stats), the open guest session other services work through, identity sync on
 * `vm sync`, the clock of a cold-booted guest, the identity program a snapshot's guest holds, and the guest's
 * listening ports with their forwarding to, and publishing on, the VM's host address. VmService builds it and
 * hands it out as `vms.guest`; no VM's lifecycle lock is held here during guest I/O.
 */

/**
 * The guest directory a command asked to run in (`vm exec -w`, `session start --cwd`): a relative one is taken
 * from where the command would otherwise run, the VM's workspace (root's home without one), as `cd` there would.
 */
export function guestDir(vm: Pick<VmRecord, 'workspace'>, dir: string): string {
  return posix.isAbsolute(dir) ? dir : posix.join(vm.workspace?.guestPath ?? GUEST_HOME, dir);
}

/**
 * The guest command line for `vm exec`: in the VM's workspace (under `mise exec` where a mise config
 * may apply, execInWorkspace) when it has one and no other directory is asked for; a login shell without argv.
 */
export function execCommand(vm: Pick<VmRecord, 'workspace'>, argv: readonly string[], cwd: string | undefined): string {
  if (cwd === undefined && vm.workspace) {
    if (argv.length === 0) return `${cdToWorkspace(vm.workspace.guestPath)}exec bash -l`;
    return execInWorkspace(vm.workspace.guestPath, argv);
  }
  const inner = argv.length === 0 ? 'exec bash -l' : `exec ${shJoin(argv)}`;
  return cwd ? `cd ${shq(cwd)} && ${inner}` : inner;
}

/**
 * Where a command runs (`vm exec`, a session): the directory asked for, else the VM's workspace, where `mise
 * exec` may apply (`mise`), else root's home.
 */
export function commandPlace(vm: Pick<VmRecord, 'workspace'>, cwd: string | undefined): { cwd: string; mise: boolean } {
  if (cwd === undefined && vm.workspace) return { cwd: vm.workspace.guestPath, mise: true };
  return { cwd: cwd ?? GUEST_HOME, mise: false };
}

/**
 * The same command for a channel that can start argv without a shell (the guest agent): argv and its
 * directory, with `mise` when the agent is to decide on `mise exec` (in the workspace; an agent with the
 * `mise` feature), or null when the command needs the shell line (a login shell, or the workspace's
 * `mise exec` decision on an agent without that feature).
 */
export function execArgv(
  vm: Pick<VmRecord, 'workspace'>,
  argv: readonly string[],
  cwd: string | undefined,
  agentDecidesMise: boolean,
): { argv: string[]; cwd: string; mise: boolean } | null {
  if (argv.length === 0) return null;
  const place = commandPlace(vm, cwd);
  return place.mise && !agentDecidesMise ? null : { argv: [...argv], ...place };
}

export interface VmExecStreams {
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
  pty?: GuestExecOptions['pty'];
  onStart?: GuestExecOptions['onStart'];
  signal?: AbortSignal;
}

export interface VmGuestAccessDeps {
  paths: Paths;
  live: LiveVms;
  log: Logger;
  /** The daemon's uid: a VM's published ports admit it and root only. */
  uid: () => number;
  /** The record of the VM called `name` when it is running; FailedPrecondition otherwise. */
  running: (name: string) => VmRecord;
  /** The same, checked under the VM's lifecycle lock, which is released before it resolves. */
  runningUnderLock: (name: string, signal?: AbortSignal) => Promise<VmRecord>;
  /** Where `vm sync` records what it synced. */
  vms: VmRepo;
  /** Puts the invoking user's identity into a guest on `vm sync`; omitted: no sync. */
  identity?: IdentitySync;
}

export class VmGuestAccess {
  /** A running VM's guest ports forwarded to its host address (VmService starts it at boot and reconcile). */
  readonly forwarder: GuestPortForwarder;

  constructor(private readonly d: VmGuestAccessDeps) {
    this.forwarder = new GuestPortForwarder({
      log: d.log,
      publish: (vm) =>
        new GuestPortProxy({
          log: d.log,
          vmName: vm.name,
          hostAddress: vm.hostAddress,
          dial: async (port) => (await this.d.live.session(vm)).openTcp(vm.guestAddress, port),
          allowedUids: new Set([d.uid(), 0]),
        }),
      session: (vm, signal) => this.d.live.session(vm, signal),
      agents: {
        portsAgent: (id) => this.d.live.portsAgent(id),
        onAgentConnected: (id, cb) => this.d.live.onAgentConnected(id, cb),
        connectInBackground: (vm) => this.d.live.connectAgentInBackground(vm),
      },
      handlesPath: (id) => d.paths.vm(id).handles,
    });
  }

  /**
   * Sets the guest's wall clock to the host's, once, when its agent first answers. A cold boot's clock comes
   * from the RTC, which holds whole seconds: the guest starts up to a second behind (0.4-0.9 s measured here),
   * enough for `make` to call a file the host just wrote "in the future". The identity program reads the
   * host's time once it runs (identity.ts), three times, and keeps the fastest exchange plus half its round
   * trip: the agent's channel is slow for a while after it starts (0.5 s one way seen), and this runs in the
   * background, where a round trip or two more cost no one. Restored and pool VMs are given the clock with the
   * rest of their identity. Best effort: a failure is logged, the VM stays usable.
   */
  setClockWhenAgentAnswers(vm: VmRecord): void {
    const live = this.d.live.get(vm.id);
    if (!live?.hasAgent) return;
    const off = this.d.live.onAgentConnected(vm.id, (client) => {
      off();
      const started = Date.now();
      applyIdentity(new AgentGuestSession(client), { clock: true, clockExchanges: 3 }, live.watch.signal).then(
        () => this.d.log.info({ vm: vm.name, ms: Date.now() - started }, 'guest clock set to the host\'s'),
        (e: unknown) => {
          if (!live.watch.signal.aborted) this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'could not set the guest clock');
        },
      );
    });
  }

  /**
   * Has the agent of a VM about to be snapshotted hold the identity program (PRESPAWNED_IDENTITY), so each VM
   * restored from the snapshot finds it running. The VM keeps holding it (a later snapshot reuses it). Best
   * effort: without it a restore starts the program itself, as an older agent's does.
   */
  async holdIdentity(vm: VmRecord, signal?: AbortSignal): Promise<void> {
    try {
      const live = this.d.live.get(vm.id);
      if (!live?.hasAgent) return;
      const agent = await this.d.live.agent(vm, signal);
      if (!this.d.live.agentFeatures(vm.id).has('prespawn')) return;
      await agent.prespawn(PRESPAWNED_IDENTITY.key, [...PRESPAWNED_IDENTITY.argv], { signal, timeoutMs: 20_000 });
    } catch (e) {
      if (!signal?.aborted) this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'the guest holds no identity program for its snapshot');
    }
  }

  /** Runs a command in a running VM, streaming its output. Holds no lifecycle lock while it runs. */
  async exec(name: string, argv: string[], workdir: string | undefined, io: VmExecStreams): Promise<number> {
    const vm = this.d.running(name);
    const cwd = workdir === undefined ? undefined : guestDir(vm, workdir);
    const command = execCommand(vm, argv, cwd);
    const direct = execArgv(vm, argv, cwd, this.d.live.agentFeatures(vm.id).has('mise'));
    let started = false;
    const run = (session: GuestSession) => {
      const opts: GuestExecOptions = {
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        pty: io.pty,
        onStart: (c) => {
          started = true;
          io.onStart?.(c);
        },
        signal: io.signal,
      };
      return direct && session instanceof AgentGuestSession
        ? session.execArgv(direct.argv, direct.cwd, command, opts, direct.mise)
        : session.exec(command, opts);
    };
    const session = await this.d.live.execSession(vm, io.signal);
    try {
      return (await run(session)).code;
    } catch (e) {
      if (!(session instanceof AgentGuestSession) || !agentFailedBeforeStart(e, started, io.signal)) throw e;
      this.d.log.warn({ vm: vm.name, err: e.message }, 'guest agent failed before the command started; using SSH');
      return (await run(await this.d.live.session(vm, io.signal))).code;
    }
  }

  /** The guest agent of a running VM (sessions, stats); FailedPrecondition for an image without one. */
  async agent(name: string, signal?: AbortSignal) {
    const vm = this.d.running(name);
    const agent = await this.d.live.agent(vm, signal);
    return { vm, agent, features: this.d.live.agentFeatures(vm.id) };
  }

  /** A running VM's resource use, as its guest agent measures it. */
  async stats(name: string, signal?: AbortSignal): Promise<VmStats> {
    const { vm, agent } = await this.agent(name, signal);
    const s = await agent.stats({ signal, timeoutMs: 10_000 });
    const sessions = await agent.sessionList?.({ signal }).catch(() => []) ?? [];
    return {
      name: vm.name,
      cpuPercent: s.cpu.percent,
      vcpus: s.cpu.cores,
      memory: s.memory,
      load: s.load,
      disks: s.disks.map((d) => ({ mount: d.path, usedBytes: d.usedBytes, freeBytes: d.freeBytes, totalBytes: d.totalBytes })),
      network: s.network,
      uptimeSeconds: s.uptimeSec,
      sessions: { running: sessions.filter((x) => x.state === 'running').length, total: sessions.length },
    };
  }

  /** The open guest session of a running VM (for the workspace service). */
  session(vm: VmRecord, signal?: AbortSignal) {
    return this.d.live.session(vm, signal);
  }

  /**
   * The channel of workspace imports and exports: the guest agent when it is connected (SSH when it cannot
   * start the script), else SSH. With the agent, a script's stdin goes through the VM's bulk port when it has
   * one (guest/bulk.ts): an image without the agent may lack the guest driver the port needs.
   */
  async transferSession(vm: VmRecord, signal?: AbortSignal): Promise<GuestSession & { isClosed: boolean }> {
    const session = await this.d.live.execSession(vm, signal);
    if (!(session instanceof AgentGuestSession)) return session;
    const first = new AgentFirstSession(session, () => this.d.live.session(vm, signal), (e) =>
      this.d.log.warn({ vm: vm.name, err: e.message }, 'guest agent failed before the transfer started; using SSH'),
    );
    const bulk = this.d.live.get(vm.id)?.handle.bulkSocketPath;
    if (bulk === undefined) return first;
    return new BulkStdinSession(first, bulk, (e) =>
      this.d.log.warn({ vm: vm.name, err: e.message }, 'bulk port not reachable; stdin goes over the guest agent'),
    );
  }

  /**
   * `banger vm sync`: the invoking user's identity into a running guest again (after editing config.json
   * or a credential). Not under the lifecycle lock: it is guest I/O; a VM stopped meanwhile fails it.
   */
  async syncIdentity(name: string, home: string | undefined, signal?: AbortSignal): Promise<VmSyncInfo> {
    if (!this.d.identity) throw failedPrecondition('identity sync is not configured in this daemon');
    const vm = await this.d.runningUnderLock(name, signal);
    const info = await this.d.identity.sync(await this.d.live.session(vm, signal), home, signal);
    this.d.vms.update(vm.id, { synced: info });
    return info;
  }

  /** The guest's listening TCP ports, with their processes and whether the host can reach them. */
  async ports(name: string, signal?: AbortSignal): Promise<VmPorts> {
    const vm = this.d.running(name);
    const live = this.d.live.get(vm.id)!;
    return listGuestPorts(await this.d.live.session(vm, signal), vm, live.forwards, signal);
  }
}
