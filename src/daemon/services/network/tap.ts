/**
 * Tap networking: one Linux bridge with its own IPv4 subnet, one tap per VM, a static guest address,
 * isolation in banger-owned nftables tables, and masquerade only for VMs allowed egress.
 *
 * What a VM can reach:
 * - the bridge address on UDP/TCP 53 (banger's DNS) and ICMP echo (so `ping $BANGER_GW` diagnoses the link);
 *   a guest's resolver always asks port 53, so when banger's DNS listens on another port (`dns.port`),
 *   bridge:53 is DNATed to bridge:PORT and that port is what the input rules accept;
 * - replies to connections the host opened (the daemon's SSH into the guest);
 * - with egress: anything routed out of the host through any interface other than the bridge, masqueraded.
 * Nothing else: not other VMs (bridge port isolation *and* a bridge-family drop between taps), not any
 * other host service or address (inet input drop), not other VMs through the host's router (inet forward
 * drop back into the bridge). A VM cannot borrow another VM's address or MAC (bridge prerouting pins each
 * tap to its own IPv4 + MAC pair) and IPv6 from taps is dropped (no IPv6 addresses are handed out, and a
 * link-local route to host services must not exist).
 *
 * Everything banger adds to the host is recorded in a JSON state file *before* it is made, so `down()`
 * and `reconcile()` can remove it after a crash. The two nft tables (`inet banger`, `bridge banger`) are
 * always replaced whole in one atomic `nft -f` transaction rendered from the state: there are no rule
 * handles to track, and a half-applied ruleset cannot exist.
 *
 * All `ip`/`nft` argv and the ruleset text are built by the pure functions below (test/unit/tap.test.ts);
 * the class only sequences them through the injected CommandRunner (an integration test prefixes every
 * command with `ip netns exec`).
 *
 * Concurrency: every public method runs under one in-process queue, so read-modify-write of the state
 * file and the ruleset replacement never interleave. One daemon owns the tables on a host.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BangerError, ErrorCode, failedPrecondition, invalidArgument } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import { IFNAME_RE, MAC_RE } from '../../../protocol/names.js';

// ---------------------------------------------------------------------------------------------------
// Pure pieces
// ---------------------------------------------------------------------------------------------------

/** Interface names of every tap banger makes start with this; the bridge-family rules match on it. */
export const TAP_PREFIX = 'bgr-';
/** Name of both banger-owned nft tables (`inet banger` and `bridge banger`). */
export const NFT_TABLE = 'banger';

export interface TapConfig {
  /** Bridge interface name (1-15 of [A-Za-z0-9_.-], must not start with the tap prefix). */
  bridge: string;
  /** IPv4 subnet in CIDR form, network address with host bits zero, prefix /8 to /30. */
  subnet: string;
}


export interface Subnet {
  /** Network address as a 32-bit unsigned number. */
  network: number;
  prefix: number;
}

export function ipv4ToNumber(addr: string): number {
  const parts = addr.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255))
    throw invalidArgument(`invalid IPv4 address '${addr}'`);
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function numberToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => String(Math.floor(n / 2 ** s) % 256)).join('.');
}

/** Parses and checks a subnet such as `172.30.0.0/24`. */
export function parseSubnet(cidr: string): Subnet {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  const hint = 'use an IPv4 network such as 172.30.0.0/24 (host bits zero, prefix /8 to /30)';
  if (!m) throw invalidArgument(`invalid tap subnet '${cidr}': expected address/prefix`, hint);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) throw invalidArgument(`invalid tap subnet '${cidr}': prefix must be /8 to /30`, hint);
  let network: number;
  try {
    network = ipv4ToNumber(m[1]!);
  } catch {
    throw invalidArgument(`invalid tap subnet '${cidr}': '${m[1]}' is not an IPv4 address`, hint);
  }
  if (network % 2 ** (32 - prefix) !== 0)
    throw invalidArgument(`invalid tap subnet '${cidr}': host bits are set (did you mean the network address?)`, hint);
  return { network, prefix };
}

/** Checks a TapConfig, throwing an InvalidArgument that names the bad key. */
export function validateTapConfig(c: TapConfig): Subnet {
  if (!IFNAME_RE.test(c.bridge))
    throw invalidArgument(`invalid bridge name '${c.bridge}': use 1-15 letters, digits, '_', '.', '-'`);
  if (c.bridge.startsWith(TAP_PREFIX))
    throw invalidArgument(`invalid bridge name '${c.bridge}': names starting with '${TAP_PREFIX}' are taps`);
  return parseSubnet(c.subnet);
}

/** The bridge's (gateway's) address: the first host address of the subnet. */
export function gatewayAddress(s: Subnet): string {
  return numberToIpv4(s.network + 1);
}

/**
 * The first free guest address: host addresses after the gateway, in order, skipping `used`
 * (dotted quads without prefix). Throws ResourceExhausted when the subnet is full.
 */
export function allocateAddress(s: Subnet, used: ReadonlySet<string>): string {
  const size = 2 ** (32 - s.prefix);
  for (let n = s.network + 2; n < s.network + size - 1; n++) {
    const a = numberToIpv4(n);
    if (!used.has(a)) return a;
  }
  throw new BangerError(
    ErrorCode.ResourceExhausted,
    `no free address left in the tap subnet ${numberToIpv4(s.network)}/${s.prefix}`,
    { hint: 'delete VMs you no longer need, or configure a larger subnet' },
  );
}

/** Whether `addr` is a usable guest address of `s` (not network, gateway or broadcast). */
export function isGuestAddress(s: Subnet, addr: string): boolean {
  const n = ipv4ToNumber(addr);
  const size = 2 ** (32 - s.prefix);
  return n >= s.network + 2 && n < s.network + size - 1;
}

/**
 * The tap name of a VM: `bgr-` + the first 11 characters of the id (letters/digits only), at most 15
 * characters (IFNAMSIZ-1). If that is `taken` by another VM, a hash of the id decides instead.
 */
export function tapNameFor(vmId: string, taken: ReadonlySet<string>): string {
  const clean = vmId.toLowerCase().replace(/[^a-z0-9]/g, '');
  const first = TAP_PREFIX + (clean || hashHex(vmId)).slice(0, 11);
  if (!taken.has(first)) return first;
  for (let i = 1; ; i++) {
    const name = TAP_PREFIX + hashHex(`${vmId}#${i}`).slice(0, 11);
    if (!taken.has(name)) return name;
  }
}

function hashHex(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** A MAC derived from an IPv4 address: `52:54:` + the four bytes (unicast, locally administered). */
export function macForAddress(addr: string): string {
  const n = ipv4ToNumber(addr);
  const bytes = [24, 16, 8, 0].map((s) => (Math.floor(n / 2 ** s) % 256).toString(16).padStart(2, '0'));
  return ['52', '54', ...bytes].join(':');
}

/** One attached VM as recorded in the state file. */
export interface TapVm {
  tapName: string;
  /** Guest IPv4 address without prefix. */
  address: string;
  /** Guest MAC (the virtio-net device's address, not the tap's). */
  mac: string;
  egress: boolean;
}

/** Input of the ruleset renderer. */
export interface RulesetInput {
  bridge: string;
  gateway: string;
  /** The port banger's DNS server listens on at the gateway address; default 53. */
  dnsPort?: number;
  vms: ReadonlyArray<{ vmId: string } & TapVm>;
}

const q = (s: string) => JSON.stringify(s);

/**
 * The complete nft script that (re)installs banger's two tables atomically: declaring then deleting
 * each table first makes the script work whether or not it already exists (nft 1.0 has no `destroy`).
 * VMs are listed sorted by id so the text is stable.
 */
export function buildRuleset(r: RulesetInput): string {
  const vms = [...r.vms].sort((a, b) => (a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : 0));
  const br = q(r.bridge);
  const egress = vms.filter((v) => v.egress);
  const dnsPort = r.dnsPort ?? 53;
  if (!Number.isInteger(dnsPort) || dnsPort < 1 || dnsPort > 65535)
    throw invalidArgument(`invalid DNS port ${dnsPort}`, 'set dns.port in config.json to 1-65535');
  const L: string[] = [removeTablesScript().trimEnd()];

  L.push(`table inet ${NFT_TABLE} {`);
  L.push('\tchain input {');
  L.push('\t\ttype filter hook input priority filter - 10; policy accept;');
  L.push(`\t\tiifname ${br} jump from_vms`);
  L.push('\t}');
  L.push('\tchain from_vms {');
  L.push('\t\tct state established,related accept');
  // After the prerouting DNAT below, DNS traffic arrives here on dnsPort.
  L.push(`\t\tip daddr ${r.gateway} udp dport ${dnsPort} accept`);
  L.push(`\t\tip daddr ${r.gateway} tcp dport ${dnsPort} accept`);
  L.push(`\t\tip daddr ${r.gateway} icmp type echo-request accept`);
  L.push('\t\tdrop');
  L.push('\t}');
  L.push('\tchain forward {');
  L.push('\t\ttype filter hook forward priority filter - 10; policy accept;');
  for (const v of egress)
    L.push(`\t\tiifname ${br} ip saddr ${v.address} oifname != ${br} accept comment ${q(`egress ${v.vmId}`)}`);
  L.push(`\t\tiifname ${br} drop`);
  L.push(`\t\toifname ${br} ct state established,related accept`);
  L.push(`\t\toifname ${br} drop`);
  L.push('\t}');
  if (dnsPort !== 53) {
    L.push('\tchain prerouting {');
    L.push('\t\ttype nat hook prerouting priority dstnat; policy accept;');
    for (const proto of ['udp', 'tcp'])
      L.push(`\t\tiifname ${br} ip daddr ${r.gateway} ${proto} dport 53 dnat ip to ${r.gateway}:${dnsPort}`);
    L.push('\t}');
  }
  if (egress.length > 0) {
    L.push('\tchain postrouting {');
    L.push('\t\ttype nat hook postrouting priority srcnat; policy accept;');
    for (const v of egress)
      L.push(`\t\tip saddr ${v.address} oifname != ${br} masquerade comment ${q(`egress ${v.vmId}`)}`);
    L.push('\t}');
  }
  L.push('}');

  L.push(`table bridge ${NFT_TABLE} {`);
  L.push('\tset vm_ipv4 {');
  L.push('\t\ttype ifname . ipv4_addr');
  if (vms.length > 0) L.push(`\t\telements = { ${vms.map((v) => `${q(v.tapName)} . ${v.address}`).join(', ')} }`);
  L.push('\t}');
  L.push('\tset vm_mac {');
  L.push('\t\ttype ifname . ether_addr');
  if (vms.length > 0) L.push(`\t\telements = { ${vms.map((v) => `${q(v.tapName)} . ${v.mac}`).join(', ')} }`);
  L.push('\t}');
  L.push('\tchain prerouting {');
  L.push('\t\ttype filter hook prerouting priority filter; policy accept;');
  L.push(`\t\tiifname ${q(TAP_PREFIX + '*')} jump from_vms`);
  L.push('\t}');
  L.push('\tchain from_vms {');
  L.push('\t\tiifname . ether saddr != @vm_mac drop');
  L.push('\t\tether type ip6 drop');
  L.push('\t\tether type ip iifname . ip saddr != @vm_ipv4 drop');
  L.push('\t\tether type arp iifname . arp saddr ip != @vm_ipv4 drop');
  L.push('\t}');
  L.push('\tchain forward {');
  L.push('\t\ttype filter hook forward priority filter; policy accept;');
  L.push(`\t\tiifname ${q(TAP_PREFIX + '*')} drop`);
  L.push('\t}');
  L.push('}');
  return L.join('\n') + '\n';
}

/** The nft script that removes banger's tables; succeeds whether or not they exist. */
export function removeTablesScript(): string {
  return (
    [
      `table inet ${NFT_TABLE}`,
      `delete table inet ${NFT_TABLE}`,
      `table bridge ${NFT_TABLE}`,
      `delete table bridge ${NFT_TABLE}`,
    ].join('\n') + '\n'
  );
}

/** argv (for `ip`) of each host change. */
export const ipArgv = {
  show: (dev: string) => ['-j', '-d', 'link', 'show', 'dev', dev],
  slaves: (bridge: string) => ['-j', '-d', 'link', 'show', 'master', bridge],
  addBridge: (bridge: string, mac: string) => ['link', 'add', 'name', bridge, 'address', mac, 'type', 'bridge'],
  /** `replace` so re-running is harmless. */
  bridgeAddress: (bridge: string, gatewayCidr: string) => ['addr', 'replace', gatewayCidr, 'dev', bridge],
  up: (dev: string) => ['link', 'set', 'dev', dev, 'up'],
  addTap: (tap: string) => ['tuntap', 'add', 'dev', tap, 'mode', 'tap'],
  enslave: (tap: string, bridge: string) => ['link', 'set', 'dev', tap, 'master', bridge],
  isolate: (tap: string) => ['link', 'set', 'dev', tap, 'type', 'bridge_slave', 'isolated', 'on'],
  /** Deletes by netlink, which also works while a VMM still holds the tap open. */
  del: (dev: string) => ['link', 'del', 'dev', dev],
};

// ---------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------

/** The JSON state file: what banger made on the host. */
export interface TapState {
  version: 1;
  /** Present from the first `up()` until `down()`. */
  bridge?: { name: string; subnet: string };
  /** Whether banger's nft tables may exist. */
  tables: boolean;
  /** Set when banger switched net.ipv4.ip_forward on (for an egress VM); `down()` switches it back. */
  ipForwardEnabled?: boolean;
  vms: Record<string, TapVm>;
}

const emptyState = (): TapState => ({ version: 1, tables: false, vms: {} });

// ---------------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------------

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

interface LinkJson {
  ifname: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_slave_kind?: string; info_slave_data?: { isolated?: boolean } };
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

  private async load(): Promise<TapState> {
    let text: string;
    try {
      text = await readFile(this.d.statePath, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
      throw e;
    }
    try {
      const st = JSON.parse(text) as TapState;
      if (st.version !== 1 || typeof st.vms !== 'object' || st.vms === null) throw new Error('unknown format');
      return st;
    } catch (e) {
      throw failedPrecondition(
        `the tap network state file ${this.d.statePath} is unreadable: ${(e as Error).message}`,
        'run `banger network down` after removing the bridge and `bgr-*` taps by hand, or delete the file',
      );
    }
  }

  private async save(st: TapState): Promise<void> {
    await mkdir(dirname(this.d.statePath), { recursive: true });
    const tmp = `${this.d.statePath}.tmp`;
    await writeFile(tmp, JSON.stringify(st, null, 2) + '\n', { mode: 0o600 });
    await rename(tmp, this.d.statePath);
  }
}

function parseLinks(stdout: string): LinkJson[] {
  const text = stdout.trim();
  if (!text) return [];
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? (v as LinkJson[]) : [];
  } catch {
    return [];
  }
}
