/**
 * The answering logic of banger's DNS server, as a pure function from a query packet to a response
 * packet. banger is authoritative for `vm.` (names of VMs) and answers reverse lookups for VM addresses;
 * it is not a recursive resolver, so anything else is REFUSED.
 */
import { isIPv4 } from 'node:net';
import dnsPacket, { type Answer, type DecodedPacket, type Packet, type Question } from 'dns-packet';

/** The zone banger answers for. */
export const VM_ZONE = 'vm';
const REVERSE_ZONE = 'in-addr.arpa';

/** Where the answers come from. */
export interface DnsZoneData {
  /** Current IPv4 address of the VM called `name` (without `.vm`, lower case), or undefined. */
  lookup: (name: string) => string | undefined;
  /** Name (without `.vm`) of the VM that has IPv4 address `ip`, or undefined. */
  reverse: (ip: string) => string | undefined;
  /** TTL of answers, and of negative answers (SOA minimum), in seconds. */
  ttl: number;
}

export type Rcode = 'NOERROR' | 'FORMERR' | 'NXDOMAIN' | 'NOTIMP' | 'REFUSED';
const RCODE_VALUE: Record<Rcode, number> = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

const OPCODE_MASK = 0xf << 11;

/**
 * Builds the response to one DNS message, or returns undefined when nothing should be sent back: the
 * bytes are not a DNS message, or the message is itself a response (answering those could loop).
 */
export function answerQuery(raw: Buffer, zone: DnsZoneData): Buffer | undefined {
  let query: DecodedPacket;
  try {
    query = dnsPacket.decode(raw);
  } catch {
    return undefined;
  }
  if (query.type === 'response') return undefined;
  const questions = query.questions ?? [];
  const flags = query.flags ?? 0;
  const reply = (rcode: Rcode, answers: Answer[] = [], authorities: Answer[] = [], aa = true): Buffer =>
    dnsPacket.encode({
      type: 'response',
      id: query.id ?? 0,
      // Keep the opcode and RD bit of the query; AA when the name is ours; never RA.
      flags:
        (flags & OPCODE_MASK) |
        (flags & dnsPacket.RECURSION_DESIRED) |
        (aa ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
        RCODE_VALUE[rcode],
      questions,
      answers,
      authorities,
      additionals: hasEdns(query) ? [ednsOpt()] : [],
    });

  if ((flags & OPCODE_MASK) !== 0) return reply('NOTIMP', [], [], false);
  if (questions.length !== 1) return reply('FORMERR', [], [], false);
  const q = questions[0]!;
  if (q.class !== undefined && q.class !== 'IN' && q.class !== 'ANY') return reply('REFUSED', [], [], false);

  const result = resolve(q, zone);
  if (result.rcode === 'REFUSED') return reply('REFUSED', [], [], false);
  const soa = result.rcode === 'NXDOMAIN' || result.answers.length === 0 ? [soaRecord(result.apex, zone.ttl)] : [];
  return reply(result.rcode, result.answers, soa);
}

interface Resolution {
  rcode: Rcode;
  answers: Answer[];
  /** The zone the name belongs to, for the SOA of a negative answer. */
  apex: string;
}

function resolve(q: Question, zone: DnsZoneData): Resolution {
  const name = normalizeName(q.name);
  const wants = (t: string) => q.type === t || (q.type as string) === 'ANY';

  if (name === VM_ZONE || name.endsWith(`.${VM_ZONE}`)) {
    const apex = VM_ZONE;
    if (name === VM_ZONE) return { rcode: 'NOERROR', answers: [], apex }; // the zone itself exists, with no A
    const label = name.slice(0, -(VM_ZONE.length + 1));
    const address = zone.lookup(label);
    if (address === undefined || !isIPv4(address)) return { rcode: 'NXDOMAIN', answers: [], apex };
    const answers: Answer[] = wants('A')
      ? [{ type: 'A', class: 'IN', name: q.name, ttl: zone.ttl, data: address }]
      : [];
    return { rcode: 'NOERROR', answers, apex };
  }

  if (name === REVERSE_ZONE || name.endsWith(`.${REVERSE_ZONE}`)) {
    const apex = REVERSE_ZONE;
    const ip = reverseNameToIp(name);
    const vm = ip === undefined ? undefined : zone.reverse(ip);
    if (vm === undefined) return { rcode: 'NXDOMAIN', answers: [], apex };
    const answers: Answer[] = wants('PTR')
      ? [{ type: 'PTR', class: 'IN', name: q.name, ttl: zone.ttl, data: `${vm.toLowerCase()}.${VM_ZONE}` }]
      : [];
    return { rcode: 'NOERROR', answers, apex };
  }

  return { rcode: 'REFUSED', answers: [], apex: '' };
}

/** Lower case, without a trailing dot: DNS names compare case-insensitively. */
export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** `4.3.2.1.in-addr.arpa` → `1.2.3.4`; undefined for anything that is not a full IPv4 reverse name. */
export function reverseNameToIp(name: string): string | undefined {
  const labels = normalizeName(name).split('.');
  if (labels.length !== 6 || labels[4] !== 'in-addr' || labels[5] !== 'arpa') return undefined;
  const octets = labels.slice(0, 4).reverse();
  // Canonical decimal octets only: "01" or "256" name no address.
  if (!octets.every((o) => /^(0|[1-9]\d{0,2})$/.test(o) && Number(o) <= 255)) return undefined;
  return octets.join('.');
}

/** `1.2.3.4` → `4.3.2.1.in-addr.arpa`. */
export function ipToReverseName(ip: string): string {
  return `${ip.split('.').reverse().join('.')}.${REVERSE_ZONE}`;
}

/** The SOA that goes in the authority section of negative answers, so resolvers cache them for `ttl`. */
function soaRecord(apex: string, ttl: number): Answer {
  return {
    type: 'SOA',
    class: 'IN',
    name: apex,
    ttl,
    data: {
      mname: `ns.${VM_ZONE}`,
      rname: `hostmaster.${VM_ZONE}`,
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: ttl,
    },
  };
}

function hasEdns(p: Packet): boolean {
  return (p.additionals ?? []).some((a) => a.type === 'OPT');
}

/** EDNS0 OPT record: answered only to queries that carry one (RFC 6891). */
function ednsOpt(): Answer {
  return {
    type: 'OPT',
    name: '.',
    udpPayloadSize: 1232,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [],
  };
}
