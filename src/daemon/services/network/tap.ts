/**
 * Tap networking: one Linux bridge with its own IPv4 subnet, one tap per VM, a static guest address,
 * isolation in banger-owned nftables tables, and masquerade only for VMs allowed egress. What a VM can
 * reach is said with the ruleset, in nft-rules.ts; addresses, tap names and MACs are tap-addresses.ts.
 *
 * Everything banger adds to the host is recorded in a JSON state file *before* it is made, so `down()`
 * and `reconcile()` can remove it after a crash. The two nft tables (`inet banger`, `bridge banger`) are
 * always replaced whole in one atomic `nft -f` transaction rendered from the state: there are no rule
 * handles to track, and a half-applied ruleset cannot exist.
 *
 * All `ip`/`nft` argv and the ruleset text are built by pure functions (ip-link.ts, nft-rules.ts,
 * tap-addresses.ts; test/unit/tap.test.ts); the class only sequences them through the injected
 * CommandRunner (an integration test prefixes every command with `ip netns exec`). The state file is
 * read and written by tap-state.ts.
 *
 * Concurrency: every public method runs under one in-process queue, so read-modify-write of the state
 * file and the ruleset replacement never interleave. One daemon owns the tables on a host.
 */
import { constants } from 'node:fs';
import { access, rm } from 'node:fs/promises';
import { failedPrecondition, invalidArgument } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { MAC_RE } from '../../../protocol/names.js';
import { NFT_TABLE, buildRuleset, removeTablesScript } from './nft-rules.js';
import {
  TAP_PREFIX,
  allocateAddress,
  gatewayAddress,
  macForAddress,
  tapNameFor,
  validateTapConfig,
  type Subnet,
  type TapConfig,
  type TapVm,
} from './tap-addresses.js';
import { loadTapState, saveTapState, type TapState } from './tap-state.js';
import { ipArgv, parseLinks, type LinkJson } from './ip-link.js';

export interface TapLog {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface TapNetworkDeps {
  run: CommandRunner;
  /** JSON file recording what exists (written atomically, mode 0600). */
  statePath: string;
  config: TapConfig;
  log: TapLog;
  /** The port banger's DNS server listens on at the bridge address (config `dns.port`); default 53. */
  dnsPort?: number;
}

/** What a VM needs to use its tap: the QEMU/Firecracker tap name and MAC, and the seed's network values. */
export interface TapAttachment {
  tapName: string;
  /** For BANGER_IP: guest address with prefix, e.g. `172.30.0.2/24`. */
  guestCidr: string;
  /** For BANGER_GW. */
  gateway: string;
  /** For BANGER_DNS (banger's DNS listens on the bridge address). */
  dns: string;
  /** The guest NIC's MAC; the tap only passes frames from this MAC. */
  mac: string;
}

export interface AttachOptions {
  egress: boolean;
  /** The guest MAC to pin (e.g. the VM record's); default derived from the address. Kept across re-attach. */
  mac?: string;
}

export interface TapVmStatus extends TapVm {
  vmId: string;
  tapExists: boolean;
  enslaved: boolean;
  isolated: boolean;
}

export interface TapStatus {
  bridge: { name: string; subnet: string; gateway: string; exists: boolean; up: boolean };
  /** Whether each banger nft table exists. */
  tables: { inet: boolean; bridge: boolean };
  ipForwardEnabledByBanger: boolean;
  vms: TapVmStatus[];
  /** `bgr-*` interfaces on the bridge that no recorded VM owns (reconcile removes them). */
  strayTaps: string[];
}

export interface TapSupport {
  ok: boolean;
  /** Why tap networking cannot work here, and what would fix it. */
  reason?: string;
}

export class TapNetwork {
  private readonly subnet: Subnet;
  private readonly gateway: string;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly d: TapNetworkDeps) {
    this.subnet = validateTapConfig(d.config);
    this.gateway = gatewayAddress(this.subnet);
  }

  /** Whether tap mode can work on this host: root, /dev/net/tun, `ip` and `nft` present. Never throws. */
  static async supported(run: CommandRunner, signal?: AbortSignal): Promise<TapSupport> {
    if (typeof process.getuid === 'function' && process.getuid() !== 0)
      return { ok: false, reason: 'tap networking needs a daemon running as root (creating bridges, taps, nft rules)' };
    try {
      await access('/dev/net/tun', constants.R_OK | constants.W_OK);
    } catch {
      return {
        ok: false,
        reason: '/dev/net/tun is missing: load the tun module (`modprobe tun`) or `mknod /dev/net/tun c 10 200`',
      };
    }
    for (const [cmd, args, pkg] of [
      ['ip', ['-V'], 'iproute2'],
      ['nft', ['--version'], 'nftables'],
    ] as const) {
      try {
        await run(cmd, args, { signal });
      } catch {
        return { ok: false, reason: `\`${cmd}\` is not installed or does not run: install ${pkg}` };
      }
    }
    const probe = await run('nft', ['list', 'tables'], { signal, allowFailure: true }).catch(() => undefined);
    if (!probe || probe.code !== 0)
      return { ok: false, reason: `nftables is not usable: ${probe?.stderr.trim() || 'nft list tables failed'}` };
    return { ok: true };
  }

  /** Creates the bridge (with the gateway address) and banger's nft tables. Idempotent. */
  up(signal?: AbortSignal): Promise<void> {
    return this.serial(async () => {
      const st = await this.load();
      await this.upLocked(st, signal);
    });
  }

  /**
   * Gives `vmId` a tap on the bridge and a guest address (bringing the network up if needed).
   * Idempotent: a VM already recorded keeps its tap, address and MAC (a restart reuses them); only its
   * egress setting follows `opts`.
   */
  attach(vmId: string, opts: AttachOptions, signal?: AbortSignal): Promise<TapAttachment> {
    return this.serial(async () => {
      const mac = opts.mac?.toLowerCase();
      if (mac !== undefined && !MAC_RE.test(mac))
        throw invalidArgument(`invalid MAC address '${opts.mac}': expected six hex pairs like 52:54:00:12:34:56`);
      const st = await this.load();
      await this.settleSettings(st, signal);
      let vm = st.vms[vmId];
      if (!vm) {
        const others = Object.values(st.vms);
        const address = allocateAddress(this.subnet, new Set(others.map((v) => v.address)));
        const tapName = tapNameFor(vmId, new Set(others.map((v) => v.tapName)));
        vm = { tapName, address, mac: mac ?? macForAddress(address), egress: opts.egress };
      } else {
        vm = { ...vm, egress: opts.egress };
      }
      st.vms[vmId] = vm;
      // Recorded before it exists, so a crash in between leaves something reconcile can remove.
      await this.save(st);
      await this.upLocked(st, signal);
      await this.ensureTap(vm, signal);
      this.d.log.info({ vmId, tap: vm.tapName, address: vm.address, egress: vm.egress }, 'tap attached');
      return this.attachmentOf(vm);
    });
  }

  /** Removes the VM's tap and rules and releases its address. Nothing recorded: nothing to do. */
  detach(vmId: string, signal?: AbortSignal): Promise<void> {
    return this.serial(async () => {
      const st = await this.load();
      const vm = st.vms[vmId];
      if (!vm) return;
      await this.deleteLink(vm.tapName, signal);
      delete st.vms[vmId];
      if (st.tables) await this.applyRuleset(st, signal);
      await this.save(st);
      this.d.log.info({ vmId, tap: vm.tapName }, 'tap detached');
    });
  }

  /** Removes everything banger made: taps, nft tables, the bridge; restores ip_forward. Idempotent. */
  down(signal?: AbortSignal): Promise<void> {
    return this.serial(async () => {
      const st = await this.load();
      const bridge = st.bridge?.name ?? this.d.config.bridge;
      const taps = new Set(Object.values(st.vms).map((v) => v.tapName));
      for (const t of await this.strayTaps(bridge, taps, signal)) taps.add(t);
      for (const t of taps) await this.deleteLink(t, signal);
      await this.d.run('nft', ['-f', '-'], { input: removeTablesScript(), signal });
      await this.deleteLink(bridge, signal);
      if (st.ipForwardEnabled) await this.d.run('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=0'], { signal });
      await rm(this.d.statePath, { force: true });
      this.d.log.info({ bridge, taps: [...taps] }, 'tap network down');
    });
  }

  /**
   * After a daemon restart: forgets and removes the taps of VMs not in `liveVmIds` (and `bgr-*` taps on
   * the bridge nobody recorded), then recreates whatever is missing for recorded VMs that are live.
   * VMs in `liveVmIds` that were never attached (user-mode networking) are ignored.
   */
  reconcile(liveVmIds: ReadonlySet<string>, signal?: AbortSignal): Promise<void> {
    return this.serial(async () => {
      const st = await this.load();
      for (const [vmId, vm] of Object.entries(st.vms)) {
        if (liveVmIds.has(vmId)) continue;
        await this.deleteLink(vm.tapName, signal);
        delete st.vms[vmId];
        this.d.log.info({ vmId, tap: vm.tapName }, 'reconcile: removed tap of a VM that is not running');
      }
      await this.save(st);
      const bridge = st.bridge?.name ?? this.d.config.bridge;
      const keep = new Set(Object.values(st.vms).map((v) => v.tapName));
      for (const t of await this.strayTaps(bridge, keep, signal)) {
        await this.deleteLink(t, signal);
        this.d.log.info({ tap: t }, 'reconcile: removed unrecorded tap');
      }
      if (Object.keys(st.vms).length === 0) {
        // Nothing attached: keep the network only if it was up, and make sure its rules match.
        if (st.bridge || st.tables) await this.upLocked(st, signal);
        return;
      }
      await this.upLocked(st, signal);
      for (const vm of Object.values(st.vms)) await this.ensureTap(vm, signal);
    });
  }

  /** What exists right now, observed (not just what is recorded). */
  status(signal?: AbortSignal): Promise<TapStatus> {
    return this.serial(async () => {
      const st = await this.load();
      const name = st.bridge?.name ?? this.d.config.bridge;
      const br = await this.link(name, signal);
      const tables = await this.d.run('nft', ['list', 'tables'], { signal, allowFailure: true });
      const lines = tables.code === 0 ? tables.stdout.split('\n').map((l) => l.trim()) : [];
      const vms: TapVmStatus[] = [];
      for (const [vmId, vm] of Object.entries(st.vms)) {
        const l = await this.link(vm.tapName, signal);
        vms.push({
          vmId,
          ...vm,
          tapExists: l !== undefined,
          enslaved: l?.master === name,
          isolated: l?.linkinfo?.info_slave_data?.isolated === true,
        });
      }
      return {
        bridge: {
          name,
          subnet: st.bridge?.subnet ?? this.d.config.subnet,
          gateway: this.gateway,
          exists: br?.linkinfo?.info_kind === 'bridge',
          up: br?.flags?.includes('UP') ?? false,
        },
        tables: {
          inet: lines.includes(`table inet ${NFT_TABLE}`),
          bridge: lines.includes(`table bridge ${NFT_TABLE}`),
        },
        ipForwardEnabledByBanger: st.ipForwardEnabled === true,
        vms,
        strayTaps: await this.strayTaps(name, new Set(Object.values(st.vms).map((v) => v.tapName)), signal),
      };
    });
  }

  // ------------------------------------------------------------------------------------------------

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private attachmentOf(vm: TapVm): TapAttachment {
    return {
      tapName: vm.tapName,
      guestCidr: `${vm.address}/${this.subnet.prefix}`,
      gateway: this.gateway,
      dns: this.gateway,
      mac: vm.mac,
    };
  }

  /**
   * Handles a state recorded under other bridge/subnet settings: with VMs still attached that is an
   * error (their guests hold the old addresses); without, the old bridge goes away and up() starts over.
   */
  private async settleSettings(st: TapState, signal?: AbortSignal): Promise<void> {
    const { bridge, subnet } = this.d.config;
    if (!st.bridge || (st.bridge.name === bridge && st.bridge.subnet === subnet)) return;
    if (Object.keys(st.vms).length > 0)
      throw failedPrecondition(
        `the tap network settings changed (bridge ${st.bridge.name} ${st.bridge.subnet} -> ${bridge} ${subnet}) while VMs are attached`,
        'stop the VMs that use tap networking, then run `banger network down`',
      );
    await this.deleteLink(st.bridge.name, signal);
    delete st.bridge;
    await this.save(st);
  }

  private async upLocked(st: TapState, signal?: AbortSignal): Promise<void> {
    const { bridge } = this.d.config;
    await this.settleSettings(st, signal);
    st.bridge = { name: bridge, subnet: this.d.config.subnet };
    st.tables = true;
    await this.save(st);

    const existing = await this.link(bridge, signal);
    if (existing && existing.linkinfo?.info_kind !== 'bridge')
      throw failedPrecondition(
        `interface '${bridge}' exists and is not a bridge`,
        'choose another bridge name in the network config, or remove that interface',
      );
    if (!existing) await this.ip(ipArgv.addBridge(bridge, macForAddress(this.gateway)), signal);
    await this.ip(ipArgv.bridgeAddress(bridge, `${this.gateway}/${this.subnet.prefix}`), signal);
    await this.ip(ipArgv.up(bridge), signal);
    await this.applyRuleset(st, signal);
  }

  private async applyRuleset(st: TapState, signal?: AbortSignal): Promise<void> {
    const vms = Object.entries(st.vms).map(([vmId, v]) => ({ vmId, ...v }));
    if (vms.some((v) => v.egress) && !st.ipForwardEnabled) {
      const cur = await this.d.run('sysctl', ['-n', 'net.ipv4.ip_forward'], { signal });
      if (cur.stdout.trim() !== '1') {
        st.ipForwardEnabled = true;
        await this.save(st);
        await this.d.run('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1'], { signal });
        this.d.log.info({}, 'enabled net.ipv4.ip_forward for VM egress');
      }
    }
    await this.d.run('nft', ['-f', '-'], {
      input: buildRuleset({ bridge: this.d.config.bridge, gateway: this.gateway, dnsPort: this.d.dnsPort, vms }),
      signal,
    });
  }

  private async ensureTap(vm: TapVm, signal?: AbortSignal): Promise<void> {
    const { bridge } = this.d.config;
    const l = await this.link(vm.tapName, signal);
    if (l && l.linkinfo?.info_kind !== 'tun')
      throw failedPrecondition(`interface '${vm.tapName}' exists and is not a tap`, 'remove that interface');
    if (!l) await this.ip(ipArgv.addTap(vm.tapName), signal);
    if (l?.master !== bridge) await this.ip(ipArgv.enslave(vm.tapName, bridge), signal);
    await this.ip(ipArgv.isolate(vm.tapName), signal);
    await this.ip(ipArgv.up(vm.tapName), signal);
  }

  /** `bgr-*` interfaces enslaved to `bridge` that are not in `known`. */
  private async strayTaps(bridge: string, known: ReadonlySet<string>, signal?: AbortSignal): Promise<string[]> {
    const r = await this.d.run('ip', ipArgv.slaves(bridge), { signal, allowFailure: true });
    if (r.code !== 0) return [];
    return parseLinks(r.stdout)
      .map((l) => l.ifname)
      .filter((n) => n.startsWith(TAP_PREFIX) && !known.has(n));
  }

  private async link(dev: string, signal?: AbortSignal): Promise<LinkJson | undefined> {
    const r = await this.d.run('ip', ipArgv.show(dev), { signal, allowFailure: true });
    if (r.code !== 0) return undefined;
    return parseLinks(r.stdout)[0];
  }

  private async deleteLink(dev: string, signal?: AbortSignal): Promise<void> {
    if (await this.link(dev, signal)) await this.ip(ipArgv.del(dev), signal);
  }

  private async ip(args: string[], signal?: AbortSignal): Promise<void> {
    this.d.log.debug({ cmd: ['ip', ...args].join(' ') }, 'tap network');
    await this.d.run('ip', args, { signal });
  }

  private load(): Promise<TapState> {
    return loadTapState(this.d.statePath);
  }

  private save(st: TapState): Promise<void> {
    return saveTapState(this.d.statePath, st);
  }
}
