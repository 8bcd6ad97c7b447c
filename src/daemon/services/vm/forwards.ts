import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentPortList } from '../../../protocol/agent.js';
import type { Logger } from '../../../shared/logger.js';
import type { RequestOptions } from '../../guest/agent-client.js';
import type { GuestSession } from '../../guest/session.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { writeHandles, type VmRuntime } from './handles.js';
import { forwardablePorts, watchGuestPorts } from './guest-ports.js';
import type { LiveVm } from './live.js';

/** What the forwarder uses of a guest agent connection (an `AgentClient`; a fake in tests). */
export interface PortsAgent {
  watchPorts(onChange: (list: AgentPortList) => void, opts?: RequestOptions): Promise<AgentPortList>;
  /** Calls `cb` once when the connection ends (at once if it has); returns the function that cancels that. */
  onClose(cb: () => void): () => void;
}

/** How the forwarder reaches the VMs' guest agents (`LiveVms`). */
export interface ForwarderAgents {
  /** The VM's open agent connection when its agent can watch ports; undefined: none now, or one too old. */
  portsAgent(vmId: string): PortsAgent | undefined;
  /** Calls `cb` each time a connection to the VM's agent is made; returns the function that stops that. */
  onAgentConnected(vmId: string, cb: () => void): () => void;
  /** Starts connecting to the VM's agent in the background, if it has one and no connection is open or coming. */
  connectInBackground(vm: VmRecord): void;
}

/** Where a VM's guest ports are published on its host address (a {@link GuestPortProxy}). */
export interface PublishedPorts {
  add(port: number): Promise<void>;
  remove(port: number): Promise<void>;
  /** The VM stopped or was let go of: every listener and connection ends. */
  close(): void;
}

export interface GuestPortForwarderDeps {
  log: Logger;
  /** Publishes the VM's guest ports (owner-only listeners on its loopback address). */
  publish: (vm: VmRecord) => PublishedPorts;
  /** The VM's open guest session (connecting if needed). */
  session: (vm: VmRecord, signal: AbortSignal) => Promise<GuestSession>;
  /** The guest agents; without them ports are always watched over SSH. */
  agents?: ForwarderAgents;
  /** handles.json of a VM: the forward set is kept there for a restarted daemon. */
  handlesPath: (vmId: string) => string;
  /** Pause after the watch ends before watching again (the guest rebooting, a broken channel, a hostile frame). */
  retryMs?: number;
  /** While ports are watched over SSH, how often a connection to the VM's agent is tried again (default 60 s). */
  agentRetryMs?: number;
}

/** Deadline of the agent's answer to `watchPorts` (its first read of /proc). */
const WATCH_PORTS_TIMEOUT_MS = 15_000;

/**
 * Keeps one forward per listening guest port on the VM's own host address while the VM runs (loopback
 * networking), so `NAME.vm:PORT` reaches a server started in the guest, for the VM's owner only (see
 * port-proxy.ts). Runs until the VM's watch signal aborts, and then closes them.
 *
 * The ports come from the guest agent, which pushes the list when it changes, while an agent that can
 * (`ports` feature) is connected; otherwise from a shell loop over SSH that prints /proc/net/tcp{,6} once a
 * second: a VM without an agent (`--no-agent`, an image without one), and any VM until its agent answers
 * (seconds after SSH under TCG) or while its agent connection is down. A new agent connection takes over
 * from SSH at once; a dropped one hands back to SSH and is connected again in the background.
 */
export class GuestPortForwarder {
  /** Agent connections whose `watchPorts` failed: SSH watches instead until the VM's next connection. */
  private readonly refused = new WeakSet<PortsAgent>();

  constructor(private readonly d: GuestPortForwarderDeps) {}

  /** The VM's agent connection, if it can watch ports and has not failed to. */
  private usableAgent(vmId: string): PortsAgent | undefined {
    const agent = this.d.agents?.portsAgent(vmId);
    return agent && !this.refused.has(agent) ? agent : undefined;
  }

  start(vm: VmRecord, live: LiveVm): void {
    if (vm.networkMode !== 'loopback') return;
    const signal = live.watch.signal;
    const ports = this.d.publish(vm);
    signal.addEventListener('abort', () => ports.close(), { once: true });
    // A VM started by an older daemon has its forwards in QEMU (hostfwd), open to every local user: they
    // go first, and are published again by the proxy.
    let applying = this.dropVmmForwards(vm, live, signal);
    const apply = (wanted: Set<number>) => {
      applying = applying
        .then(async () => {
          for (const port of [...live.forwards].filter((p) => !wanted.has(p))) {
            await ports.remove(port);
            live.forwards.delete(port);
          }
          for (const port of [...wanted].filter((p) => !live.forwards.has(p))) {
            if (signal.aborted) return;
            try {
              await ports.add(port);
              live.forwards.add(port);
            } catch (e) {
              this.d.log.warn({ vm: vm.name, port, err: (e as Error).message }, 'could not forward guest port');
            }
          }
          this.d.log.info({ vm: vm.name, ports: [...live.forwards], source: live.portWatch }, 'guest port forwards');
        })
        .catch(() => undefined);
    };
    void (async () => {
      while (!signal.aborted) {
        let handedOver = false;
        try {
          const agent = this.usableAgent(vm.id);
          if (agent) await this.watchAgent(vm, live, agent, apply, signal);
          else handedOver = await this.watchSsh(vm, live, apply, signal);
        } catch (e) {
          if (!signal.aborted) this.d.log.warn({ vm: vm.name, err: (e as Error).message }, 'guest port watch ended');
        }
        if (!handedOver) await sleep(this.d.retryMs ?? 2000, undefined, { signal }).catch(() => undefined);
      }
      live.portWatch = undefined;
    })();
  }

  /** Removes forwards an older daemon made in the VMM, and forgets them in handles.json. */
  private async dropVmmForwards(vm: VmRecord, live: LiveVm, signal: AbortSignal): Promise<void> {
    const pf = live.driver.portForwarding;
    if (live.forwards.size === 0) return;
    for (const port of live.forwards)
      await pf?.removeForward(live.handle, { hostAddress: vm.hostAddress, hostPort: port, guestPort: port }, signal).catch(() => undefined);
    live.forwards.clear();
    if (!signal.aborted) {
      const handle: VmRuntime = { ...live.handle };
      delete handle.forwards;
      live.handle = handle;
      await writeHandles(this.d.handlesPath(vm.id), handle).catch(() => undefined);
    }
  }

  /** Takes the agent's pushed lists until its connection ends (or the VM is let go of). */
  private async watchAgent(
    vm: VmRecord,
    live: LiveVm,
    agent: PortsAgent,
    apply: (ports: Set<number>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const stop = new AbortController();
    const both = AbortSignal.any([signal, stop.signal]);
    const offClose = agent.onClose(() => stop.abort());
    let truncatedSaid = false;
    const take = (list: AgentPortList) => {
      if (both.aborted) return;
      if (list.truncated && !truncatedSaid) {
        truncatedSaid = true;
        this.d.log.warn({ vm: vm.name, listed: list.ports.length }, 'the guest listens on more ports than its agent lists');
      }
      apply(forwardablePorts(list.ports, vm.guestAddress));
    };
    // The reply comes before any event, but an event in the same read is handled before the reply's await
    // resumes: the newest list wins.
    let started = false;
    let latest: AgentPortList | null = null;
    const onChange = (list: AgentPortList) => {
      latest = list;
      if (started) take(list);
    };
    try {
      const first = await agent.watchPorts(onChange, { signal: both, timeoutMs: WATCH_PORTS_TIMEOUT_MS }).catch((e: unknown) => {
        // An agent that says it can watch ports but does not answer well is not asked again on this connection.
        if (!both.aborted) this.refused.add(agent);
        throw e;
      });
      started = true;
      live.portWatch = 'agent';
      this.d.log.info({ vm: vm.name }, 'guest ports: pushed by the guest agent');
      take(latest ?? first);
      if (!both.aborted) await new Promise((resolve) => both.addEventListener('abort', resolve, { once: true }));
      if (!signal.aborted)
        this.d.log.info({ vm: vm.name }, 'guest ports: the agent connection ended; watching over SSH until it is back');
    } finally {
      offClose();
      stop.abort();
    }
  }

  /**
   * Watches over SSH until the watch ends, or until an agent that can watch ports connects: then returns
   * true (the caller switches without a pause). Meanwhile the agent is connected in the background, again
   * every `agentRetryMs` while it does not answer.
   */
  private async watchSsh(
    vm: VmRecord,
    live: LiveVm,
    apply: (ports: Set<number>) => void,
    signal: AbortSignal,
  ): Promise<boolean> {
    const agents = this.d.agents;
    const handOver = new AbortController();
    const both = AbortSignal.any([signal, handOver.signal]);
    const off = agents?.onAgentConnected(vm.id, () => {
      if (this.usableAgent(vm.id)) handOver.abort();
    });
    const retry = agents
      ? setInterval(() => agents.connectInBackground(vm), this.d.agentRetryMs ?? 60_000).unref()
      : undefined;
    try {
      agents?.connectInBackground(vm);
      if (live.portWatch !== 'ssh') this.d.log.info({ vm: vm.name }, 'guest ports: polled over SSH');
      live.portWatch = 'ssh';
      const session = await this.d.session(vm, both);
      await watchGuestPorts(session, vm.guestAddress, apply, both);
    } catch (e) {
      if (!handOver.signal.aborted) throw e;
    } finally {
      off?.();
      clearInterval(retry);
    }
    return handOver.signal.aborted && !signal.aborted;
  }
}
