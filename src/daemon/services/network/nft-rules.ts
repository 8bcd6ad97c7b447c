/**
 * The text of banger's two nftables tables (`inet banger`, `bridge banger`), rendered whole from the tap
 * state by pure functions that test/unit/tap.test.ts pins; TapNetwork (tap.ts) applies it in one atomic
 * `nft -f` transaction.
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
 */
import { invalidArgument } from '../../../errors/index.js';
import { TAP_PREFIX, type TapVm } from './tap-addresses.js';

/** Name of both banger-owned nft tables (`inet banger` and `bridge banger`). */
export const NFT_TABLE = 'banger';

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
