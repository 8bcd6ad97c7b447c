import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { failedPrecondition } from '../../../errors/index.js';
import type { Paths, VmPaths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import { SshGuestSession, type SshTarget } from '../../guest/ssh.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { VmHandle, VmmDriver } from '../../vmm/driver.js';
import { removeRuntimeFiles, type VmRuntime } from './handles.js';
import { AgentClient } from '../../guest/agent-client.js';
import { AgentGuestSession } from '../../guest/agent-session.js';
import { connect as connectUnix } from 'node:net';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { POWEROFF_COMMAND } from '../../guest/init/contract.js';
import { watchAgent } from './agent-ping.js';
import { untilAborted } from './until-aborted.js';

/** What is true right now about a VM the daemon believes runs. */
export interface LiveVm {
  handle: VmHandle;
  driver: VmmDriver;
  session?: SshGuestSession;
  connecting?: Promise<SshGuestSession>;
  /** Set while banger itself stops the VM, so its exit is not reported as unexpected. */
  stopping: boolean;
  /** Aborted when the daemon lets go of the VM: ends the exit watcher and the port watcher. */
  watch: AbortController;
  /** Guest ports forwarded on the VM's host address. */
  forwards: Set<number>;
  /** The guest has an agent on its channel (said at boot; kept in handles.json). */
  hasAgent: boolean;
  agent?: AgentClient;
  agentConnecting?: Promise<AgentClient>;
  /** What the connected agent said it can do (its hello). */
  agentFeatures: ReadonlySet<string>;
  /** Told each time a connection to the agent is made (its hello answered). */
  agentListeners: Set<(client: AgentClient) => void>;
  /** Where the port forwarder learns the guest's listening ports right now (loopback networking). */
  portWatch?: 'agent' | 'ssh';
  /** Set while the guest's CPUs are stopped (a warm pool's VM): the agent is not pinged meanwhile. */
  parked?: boolean;
}

export function newLiveVm(handle: VmRuntime, driver: VmmDriver): LiveVm {
  return {
    handle,
    driver,
    stopping: false,
    watch: new AbortController(),
    forwards: new Set(handle.forwards ?? []),
    hasAgent: handle.agent === true,
    agentFeatures: new Set(),
    agentListeners: new Set(),
  };
}

/** How long the daemon waits for the agent's hello on a fresh connection. */
const AGENT_HELLO_TIMEOUT_MS = 10_000;
/** The agent is asked for a hello this often (see agent-ping.ts). */
const AGENT_PING_MS = 5_000;

/** Files that describe a running VM and mean nothing once it stopped. */
export function runtimeFiles(vp: VmPaths): string[] {
  return [vp.handles, vp.qmpSocket, vp.apiSocket, vp.vsockSocket, vp.agentSocket, vp.pidFile, vp.seedDisk];
}

export interface LiveVmsDeps {
  paths: Paths;
  log: Logger;
  /** banger's client key, authorized in every guest. */
  clientKey: { privateKey: string };
  /** Told when a VM's process ended without banger stopping it (guest poweroff, VMM crash). */
  onUnexpectedExit: (vmId: string) => void;
}

/**
 * The VMs whose VMM process this daemon holds, with one SSH connection each (opened on first use and kept
 * while the VM runs). Owns the exit watch of each; knows nothing about records beyond what a call passes in.
 */
export class LiveVms {
  private readonly live = new Map<string, LiveVm>();

  constructor(private readonly d: LiveVmsDeps) {}

  get(id: string): LiveVm | undefined {
    return this.live.get(id);
  }

  has(id: string): boolean {
    return this.live.has(id);
  }

  get size(): number {
    return this.live.size;
  }

  /** Registers a VM's live process and watches for it to exit. */
  add(id: string, live: LiveVm): void {
    this.live.set(id, live);
    live.driver.waitExit(live.handle, live.watch.signal).then(
      async () => {
        if (this.live.get(id) !== live || live.stopping) return;
        this.live.delete(id);
        live.session?.close();
        live.agent?.close();
        await removeRuntimeFiles(runtimeFiles(this.d.paths.vm(id)));
        this.d.onUnexpectedExit(id);
      },
      () => undefined,
    );
  }

  /** Ends the VMM (if any), closes its connection and removes its runtime files. */
  async teardown(id: string): Promise<void> {
    const live = this.live.get(id);
    if (live) {
      live.stopping = true;
      live.watch.abort();
      live.session?.close();
      live.agent?.close();
      await live.driver.kill(live.handle, 3000).catch(() => undefined);
      this.live.delete(id);
    }
    await removeRuntimeFiles(runtimeFiles(this.d.paths.vm(id)));
  }

  /**
   * Asks the guest of a VM this daemon holds to power off (over SSH, else through the VMM) and waits up to
   * `timeoutMs` for the VMM to exit; false when it did not.
   */
  async shutdownGuest(vm: VmRecord, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    const live = this.live.get(vm.id)!;
    // After a daemon restart there is no connection yet: make one, briefly, to ask the guest.
    const session = await this.session(vm, AbortSignal.timeout(Math.min(timeoutMs, 10_000))).catch(() => undefined);
    let asked = false;
    if (session && !session.isClosed) {
      // The guest may drop the connection as it goes down: asking counts either way.
      await session.exec(POWEROFF_COMMAND, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
      asked = true;
    }
    if (!asked && live.driver.requestShutdown) {
      await live.driver.requestShutdown(live.handle, signal).catch(() => undefined);
    }
    const timer = AbortSignal.timeout(timeoutMs);
    try {
      await live.driver.waitExit(live.handle, signal ? AbortSignal.any([signal, timer]) : timer);
      return true;
    } catch {
      return false;
    }
  }

  /** Lets go of every VM without stopping it (they outlive the daemon): closes connections and watchers. */
  detachAll(): void {
    for (const live of this.live.values()) {
      live.watch.abort();
      live.session?.close();
      live.agent?.close();
    }
    this.live.clear();
  }

  /** Where banger's SSH client reaches `vm`, with the host key it must present. */
  sshTarget(vm: VmRecord, hostPublicKey: string): SshTarget {
    return {
      host: vm.hostAddress,
      port: vm.sshPort,
      username: 'root',
      privateKey: this.d.clientKey.privateKey,
      hostPublicKey,
    };
  }

  /** Adopts `session` as the VM's connection (made during boot). */
  useSession(live: LiveVm, session: SshGuestSession): void {
    live.session = session;
    session.onClose(() => {
      if (live.session === session) live.session = undefined;
    });
  }

  /** The open SSH session of a running VM, connecting once if there is none (after a daemon restart). */
  async session(vm: VmRecord, signal?: AbortSignal): Promise<SshGuestSession> {
    const live = this.live.get(vm.id);
    if (!live) throw failedPrecondition(`VM '${vm.name}' is not running`, `start it with \`banger vm start ${vm.name}\``);
    if (live.session && !live.session.isClosed) return live.session;
    if (!live.connecting) {
      const hostPublicKey = (await readFile(this.d.paths.vm(vm.id).hostKeyPublic, 'utf8')).trim();
      // Shared by every caller that comes while it connects, so it ends only with the VM (its watch signal),
      // never with the first caller's: a port watch that stops must not cancel an exec waiting on it too.
      live.connecting = SshGuestSession.waitFor(this.sshTarget(vm, hostPublicKey), {
        deadlineMs: 30_000,
        // Its SSH server is up (a restored VM connects first here): a slow handshake is a loaded host, and an
        // attempt given up just before it completes would start over.
        attemptTimeoutMs: 15_000,
        signal: live.watch.signal,
        stillBooting: () => live.driver.isAlive(live.handle, vm.id),
      }).finally(() => (live.connecting = undefined));
    }
    const s = await untilAborted(live.connecting, signal, 'cancelled while connecting to the guest');
    this.useSession(live, s);
    return s;
  }

  /**
   * The VM's guest agent, connecting once if there is no open connection (after a daemon restart, or after
   * the agent dropped it). Fails with Unavailable when the image has no agent or it does not answer.
   * `firstHelloMs`: how long the first attempt waits for the hello (default AGENT_HELLO_TIMEOUT_MS), for a
   * connection made before the guest runs.
   */
  async agent(vm: VmRecord, signal?: AbortSignal, opts: { firstHelloMs?: number } = {}): Promise<AgentClient> {
    const live = this.live.get(vm.id);
    if (!live) throw failedPrecondition(`VM '${vm.name}' is not running`, `start it with \`banger vm start ${vm.name}\``);
    if (!live.hasAgent)
      throw vm.agent
        ? new BangerError(ErrorCode.FailedPrecondition, `VM '${vm.name}' has no guest agent (its image predates it)`, {
            hint: 'rebuild the image with `banger image build --force NAME` and create the VM again',
          })
        : new BangerError(ErrorCode.FailedPrecondition, `VM '${vm.name}' was created with --no-agent: sessions and stats need the guest agent`, {
            hint: 'create a VM without --no-agent for them (`vm exec` and `vm ssh` work over SSH on this one)',
          });
    if (live.agent && !live.agent.closed) return live.agent;
    if (!live.agentConnecting) {
      live.agentConnecting = this.connectAgent(vm, live, opts.firstHelloMs ?? AGENT_HELLO_TIMEOUT_MS, signal)
        .then((client) => {
          live.agent = client;
          for (const cb of [...live.agentListeners]) cb(client);
          return client;
        })
        .finally(() => (live.agentConnecting = undefined));
    }
    return live.agentConnecting;
  }

  /**
   * Stops a running VM's CPUs where they are (a warm pool parks its VMs so). Its SSH connection is closed
   * first (a paused guest cannot answer keepalives; the next user reconnects); the agent's stays open, unpinged.
   */
  async park(id: string, signal?: AbortSignal): Promise<void> {
    const live = this.live.get(id);
    const pausing = live?.driver.pausing;
    if (!live || !pausing) throw failedPrecondition(`VM ${id} cannot be parked: it is not running under a VMM that can pause`);
    live.session?.close();
    live.parked = true;
    try {
      await pausing.pause(live.handle, signal);
    } catch (e) {
      live.parked = false;
      throw e;
    }
  }

  /** Starts a parked VM's CPUs again. */
  async unpark(id: string, signal?: AbortSignal): Promise<void> {
    const live = this.live.get(id);
    const pausing = live?.driver.pausing;
    if (!live || !pausing) throw failedPrecondition(`VM ${id} cannot be resumed: it is not running under a VMM that can pause`);
    await pausing.resume(live.handle, signal);
    live.parked = false;
  }

  /** Calls `cb` each time a connection to the VM's agent is made; returns the function that stops that. */
  onAgentConnected(id: string, cb: (client: AgentClient) => void): () => void {
    const live = this.live.get(id);
    if (!live) return () => {};
    live.agentListeners.add(cb);
    return () => live.agentListeners.delete(cb);
  }

  /** The VM's open agent connection when its agent can watch ports (images older than that cannot). */
  portsAgent(id: string): AgentClient | undefined {
    const live = this.live.get(id);
    if (!live?.agent || live.agent.closed || !live.agentFeatures.has('ports')) return undefined;
    return live.agent;
  }

  /** What the VM's agent can do (empty until it connected). */
  agentFeatures(id: string): ReadonlySet<string> {
    return this.live.get(id)?.agentFeatures ?? new Set();
  }

  /**
   * Connects and checks hello, up to six times, a little longer apart each time: the guest end of a
   * virtio-serial port outlives the host's connection, so the first exchange after a daemon restart can meet
   * what the agent was in the middle of (a write blocked since the old daemon went, or a port it was closing,
   * which discards what arrived meanwhile); the agent drops that connection and serves the next. The pause
   * before a retry outlasts the agent's letting go of the port after this side closes (what is sent while it
   * is closed waits in the VMM); a retry sooner could land in that window again. No retry when the VMM's
   * socket is gone or refuses (the VMM has exited, as in every `vm stop`), or when the VM is being stopped.
   */
  private async connectAgent(vm: VmRecord, live: LiveVm, firstHelloMs: number, signal?: AbortSignal): Promise<AgentClient> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.connectAgentOnce(vm, live, attempt === 1 ? firstHelloMs : 5_000, signal);
      } catch (e) {
        const gone = e instanceof AgentSocketError || live.stopping || this.live.get(vm.id) !== live;
        if (signal?.aborted || gone || attempt >= 6) throw e;
        this.d.log.warn({ vm: vm.name, attempt, err: (e as Error).message }, 'guest agent hello failed; reconnecting');
        await sleep(400 + 100 * attempt, undefined, { signal }).catch(() => undefined);
      }
    }
  }

  private async connectAgentOnce(vm: VmRecord, live: LiveVm, helloMs: number, signal?: AbortSignal): Promise<AgentClient> {
    const path = this.d.paths.vm(vm.id).agentSocket;
    const sock = await new Promise<import('node:net').Socket>((resolve, reject) => {
      const s = connectUnix(path, () => resolve(s));
      s.once('error', (e) => reject(new AgentSocketError(`cannot reach the guest agent of VM '${vm.name}': ${e.message}`)));
    });
    const client = new AgentClient(sock, {
      label: vm.name,
      log: (message) => this.d.log.warn({ vm: vm.name, message }, 'guest agent connection'),
    });
    try {
      const hello = await client.hello({ signal, timeoutMs: helloMs });
      live.agentFeatures = new Set(hello.features);
      watchAgent(
        {
          hello: (timeoutMs) => client.hello({ timeoutMs }),
          guestAnswers: async (timeoutMs) => {
            const signal = AbortSignal.timeout(timeoutMs);
            await (await this.session(vm, signal)).exec('true', { signal });
            return true;
          },
          gone: () => client.closed || live.watch.signal.aborted,
          parked: () => live.parked === true,
          drop: (reason) => {
            this.d.log.warn({ vm: vm.name }, reason);
            client.close();
          },
          warn: (message) => this.d.log.warn({ vm: vm.name }, message),
        },
        { intervalMs: AGENT_PING_MS, timeoutMs: AGENT_HELLO_TIMEOUT_MS },
      );
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  /**
   * The channel commands of `vm exec` use: the guest agent when it is connected. While a connection to it is
   * being made, whichever of it and SSH is ready first: right after a daemon restart the agent answers in tens
   * of milliseconds, well before an SSH handshake (~0.5 s under TCG), while just after a boot SSH is open
   * already and the agent still starting. With no agent to connect to, SSH. When neither can be had, SSH's
   * error is the one thrown.
   */
  async execSession(vm: VmRecord, signal?: AbortSignal): Promise<AgentGuestSession | SshGuestSession> {
    const live = this.live.get(vm.id);
    if (live?.agent && !live.agent.closed) return new AgentGuestSession(live.agent);
    this.connectAgentInBackground(vm);
    const connecting = live?.agentConnecting;
    if (!connecting) return this.session(vm, signal);
    const ssh = this.session(vm, signal);
    const agent = untilAborted(connecting, signal, 'cancelled while connecting to the guest').then((c) => new AgentGuestSession(c));
    try {
      return await Promise.any([agent, ssh]);
    } catch (e) {
      throw e instanceof AggregateError ? (e.errors[1] as Error) : e;
    }
  }

  /** Starts connecting to the VM's agent if it has one and no connection is open or being made. */
  connectAgentInBackground(vm: VmRecord): void {
    const live = this.live.get(vm.id);
    if (!live?.hasAgent || live.stopping || live.agentConnecting || (live.agent && !live.agent.closed)) return;
    this.agent(vm, live.watch.signal).catch((e: unknown) => {
      if (!live.watch.signal.aborted && !live.stopping && this.live.get(vm.id) === live)
        this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'guest agent not reachable; commands use SSH');
    });
  }

  /** Which channel `vm exec` uses for a running VM, as `vm show` reports it. */
  channel(id: string): 'agent' | 'ssh' | null {
    const live = this.live.get(id);
    if (!live) return null;
    return live.hasAgent ? 'agent' : 'ssh';
  }
}

/** The VMM's end of the agent's port cannot be connected to: the VMM has exited (or is not up yet). */
class AgentSocketError extends BangerError {
  constructor(message: string) {
    super(ErrorCode.Unavailable, message);
  }
}
