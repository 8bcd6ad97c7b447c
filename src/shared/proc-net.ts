/**
 * Reading the kernel's socket tables, /proc/net/tcp and tcp6: the guest agent lists listening ports from
 * them, and the daemon finds which user opened a loopback connection to it.
 */

/**
 * The text form of an address column of /proc/net/tcp (8 hex digits) or tcp6 (32): the kernel prints each
 * 32-bit word in the machine's byte order, little-endian wherever banger runs (x86-64, arm64). IPv6 comes
 * out in the short form (`::`, `::1`, `fe80::1`), an IPv4-mapped one as `::ffff:10.0.2.15`. null: not an
 * address.
 */
export function procAddress(hex: string): string | null {
  if (!/^[0-9A-Fa-f]+$/.test(hex) || (hex.length !== 8 && hex.length !== 32)) return null;
  const bytes: number[] = [];
  for (let w = 0; w < hex.length; w += 8)
    for (let b = 3; b >= 0; b--) bytes.push(parseInt(hex.slice(w + 2 * b, w + 2 * b + 2), 16));
  if (bytes.length === 4) return bytes.join('.');
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff)
    return `::ffff:${bytes.slice(12).join('.')}`;
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  // The longest run of two or more zero groups (the first of equals) becomes "::".
  let best = { at: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j;
  }
  const hexes = groups.map((g) => g.toString(16));
  if (best.len < 2) return hexes.join(':');
  return `${hexes.slice(0, best.at).join(':')}::${hexes.slice(best.at + best.len).join(':')}`;
}

/**
 * `st` columns of a connected socket that still has its owner: ESTABLISHED, FIN_WAIT1/2 (a client that shut
 * down writing), CLOSE_WAIT, LAST_ACK, CLOSING. Not TIME_WAIT, whose rows say uid 0 whoever owned them.
 */
const CONNECTED = new Set(['01', '04', '05', '08', '09', '0B']);

/**
 * The uid that owns the connected socket whose own end is `local` and whose peer is `remote`, from one
 * listing of /proc/net/tcp or tcp6 (addresses in {@link procAddress}'s form; an IPv4-mapped IPv6 socket
 * matches its IPv4 address). undefined: no such socket (it closed meanwhile, or another namespace holds it).
 */
export function socketOwner(
  table: string,
  local: { address: string; port: number },
  remote: { address: string; port: number },
): number | undefined {
  const same = (col: string | undefined, want: { address: string; port: number }) => {
    const [addrHex, portHex] = (col ?? '').split(':');
    if (!addrHex || !portHex || parseInt(portHex, 16) !== want.port) return false;
    const a = procAddress(addrHex);
    return a === want.address || a === `::ffff:${want.address}`;
  };
  for (const line of table.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 8 || !CONNECTED.has(cols[3]!)) continue;
    if (same(cols[1], local) && same(cols[2], remote)) {
      const uid = Number(cols[7]);
      return Number.isInteger(uid) && uid >= 0 ? uid : undefined;
    }
  }
  return undefined;
}

/**
 * The uid that owns the UDP socket bound to `port` on `address` (or on the wildcard address), from one
 * listing of /proc/net/udp or udp6: who sent a datagram from there. undefined: no such socket.
 */
export function udpSocketOwner(table: string, from: { address: string; port: number }): number | undefined {
  const exact = new Set([from.address, `::ffff:${from.address}`]);
  let wildcard: number | undefined;
  for (const line of table.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 8) continue;
    const [addrHex, portHex] = (cols[1] ?? '').split(':');
    if (!addrHex || !portHex || parseInt(portHex, 16) !== from.port) continue;
    const a = procAddress(addrHex);
    const uid = Number(cols[7]);
    if (a === null || !Number.isInteger(uid) || uid < 0) continue;
    // A socket bound to the very address wins over one bound to the wildcard address.
    if (exact.has(a)) return uid;
    if (a === '0.0.0.0' || a === '::') wildcard ??= uid;
  }
  return wildcard;
}
