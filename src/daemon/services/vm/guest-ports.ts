import { Writable } from 'node:stream';
import type { GuestSession } from '../../guest/session.js';

/** The guest command that reports its TCP sockets once a second, frames separated by a line "@@". */
export const LISTEN_WATCH_COMMAND =
  'while :; do cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; echo @@; sleep 1; done';

const LISTEN = '0A';

/** Hex address of /proc/net/tcp{,6} as printed by the kernel for the guest's own address (little endian per word). */
function ipv4Hex(ip: string): string {
  return ip
    .split('.')
    .map((o) => Number(o).toString(16).padStart(2, '0').toUpperCase())
    .reverse()
    .join('');
}

/**
 * TCP ports the guest listens on that a forward can reach: bound to any address or to `guestIp`
 * (not loopback-only sockets). Port 22 is banger's own SSH forward and is left out.
 */
export function listeningPorts(procNetTcp: string, guestIp: string): Set<number> {
  const reachable = new Set(['00000000', ipv4Hex(guestIp), '00000000000000000000000000000000', `0000000000000000FFFF0000${ipv4Hex(guestIp)}`]);
  const ports = new Set<number>();
  for (const line of procNetTcp.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 4 || cols[3] !== LISTEN) continue;
    const [addr, portHex] = (cols[1] ?? '').split(':');
    if (!addr || !portHex || !reachable.has(addr.toUpperCase())) continue;
    const port = parseInt(portHex, 16);
    if (port > 0 && port !== 22) ports.add(port);
  }
  return ports;
}

/**
 * Watches the guest's listening TCP ports over one long-running SSH channel and calls `onChange` with the
 * full set whenever it changes. Ends when `signal` aborts or the channel closes.
 */
export async function watchGuestPorts(
  session: GuestSession,
  guestIp: string,
  onChange: (ports: Set<number>) => void,
  signal: AbortSignal,
): Promise<void> {
  let buf = '';
  let last = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      buf += chunk.toString('utf8');
      let i: number;
      while ((i = buf.indexOf('@@\n')) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 3);
        const ports = listeningPorts(frame, guestIp);
        const key = [...ports].sort((a, b) => a - b).join(',');
        if (key !== last) {
          last = key;
          onChange(ports);
        }
      }
      cb();
    },
  });
  await session.exec(LISTEN_WATCH_COMMAND, { stdout: sink, signal }).catch(() => undefined);
}

/** A row of `ss -ltnpH` in the guest: the listening socket and its process. */
export interface GuestListener {
  address: string;
  port: number;
  process: string | null;
}

/** Parses `ss -H -ltnp` output. */
export function parseSs(text: string): GuestListener[] {
  const rows: GuestListener[] = [];
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 4) continue;
    const local = cols[3]!;
    const idx = local.lastIndexOf(':');
    const port = Number(local.slice(idx + 1));
    if (!Number.isInteger(port)) continue;
    const proc = /users:\(\("([^"]+)"/.exec(line)?.[1] ?? null;
    rows.push({ address: local.slice(0, idx).replace(/^\[|\]$/g, ''), port, process: proc });
  }
  return rows;
}
