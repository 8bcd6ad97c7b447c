/**
 * Per-user loopback defaults, so that daemons of different users on one host never pick the same
 * addresses or DNS socket:
 *
 * - root (uid 0): banger's DNS server on 127.77.0.1:53, VMs on 127.77.0.2 upwards (127.77.0.0/16), as always.
 * - any other uid U: its own /24, `127.S.T.0/24` with S = 128 + ((U >> 8) & 127) and T = U & 255. The DNS
 *   server listens on 127.S.T.1 port {@link USER_DNS_PORT} (a normal user cannot bind port 53), VMs get
 *   127.S.T.2 to 127.S.T.254 (253 VMs). Distinct for every uid below 32768; uids that are equal modulo
 *   32768 share a block (the daemon still skips an address whose port is taken, but names the clash in
 *   `banger doctor`).
 * All of 127/8 is local on Linux, so none of it needs setup. config.json's `dns.address` and `dns.port`
 * override the DNS defaults.
 */

/** The DNS port of a normal user's daemon (root's is 53). */
export const USER_DNS_PORT = 10053;

/** The loopback addresses a daemon gives its VMs: `127.second.(n >> 8).(n & 255)` for n in first..last. */
export interface LoopbackRange {
  second: number;
  first: number;
  last: number;
}

export interface UserNetworkDefaults {
  dnsAddress: string;
  dnsPort: number;
  range: LoopbackRange;
}

/** The defaults for a daemon running as `uid` (see the module comment). */
export function userNetworkDefaults(uid: number): UserNetworkDefaults {
  if (uid === 0) return { dnsAddress: '127.77.0.1', dnsPort: 53, range: { second: 77, first: 2, last: 65534 } };
  const second = 128 + ((uid >> 8) & 127);
  const third = uid & 255;
  return {
    dnsAddress: `127.${second}.${third}.1`,
    dnsPort: USER_DNS_PORT,
    range: { second, first: third * 256 + 2, last: third * 256 + 254 },
  };
}

/** The range as people read it, e.g. `127.77.0.2 upwards` or `127.131.233.2-254`. */
export function describeRange(r: LoopbackRange): string {
  const third = r.first >> 8;
  if (r.last - r.first > 255) return `127.${r.second}.${third}.${r.first & 255} upwards`;
  return `127.${r.second}.${third}.${r.first & 255}-${r.last & 255}`;
}
