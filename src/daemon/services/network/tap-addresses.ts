/**
 * What each VM gets on banger's tap bridge, as pure functions: the bridge settings checked, the subnet's
 * gateway and free guest addresses, the tap's name and the guest's MAC. TapNetwork (tap.ts) records and
 * applies them; test/unit/tap.test.ts pins them.
 */
import { createHash } from 'node:crypto';
import { BangerError, ErrorCode, invalidArgument } from '../../../errors/index.js';
import { IFNAME_RE } from '../../../protocol/names.js';

/** Interface names of every tap banger makes start with this; the bridge-family rules match on it. */
export const TAP_PREFIX = 'bgr-';

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
