import { Writable } from 'node:stream';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { GuestSession } from '../../guest/session.js';
import { capturedExec } from '../../guest/capped.js';
import type { VmPorts } from '../../../protocol/vm.js';
import type { ListeningPort } from '../../../protocol/agent.js';
import { dnsName } from '../../../protocol/names.js';

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
 * The ports of an agent's list that a forward can reach, by the same rule as {@link listeningPorts}: bound to
 * any address or to `guestIp` (also as an IPv4-mapped IPv6 address), and not port 22.
 */
export function forwardablePorts(list: readonly ListeningPort[], guestIp: string): Set<number> {
  const reachable = new Set(['0.0.0.0', '::', guestIp, `::ffff:${guestIp}`]);
  return new Set(list.filter((l) => l.port !== 22 && reachable.has(l.address)).map((l) => l.port));
}

/** Largest frame (one listing of /proc/net/tcp{,6}) accepted from a guest: ~25,000 sockets. */
export const MAX_PORTS_FRAME_BYTES = 4 * 1024 * 1024;

const DELIM = Buffer.from('@@\n');

/**
 * Splits a guest's byte stream into frames ended by a line "@@", without ever holding more than `maxFrame`
 * bytes: each chunk is scanned once (plus the few bytes a delimiter may straddle). A frame that grows past
 * the cap is hostile or broken: `onOverflow` is called and the rest is dropped.
 */
export class FrameSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private overflowed = false;

  constructor(
    private readonly maxFrame: number,
    private readonly onFrame: (frame: Buffer) => void,
    private readonly onOverflow: () => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.overflowed) return;
    // A delimiter may begin in the last bytes already held: search them together with the chunk.
    const held = this.tail(Math.min(this.size, DELIM.length - 1));
    const buf = held.length > 0 ? Buffer.concat([held, chunk]) : chunk;
    let heldEnd = held.length; // bytes of `buf` that are already held
    let from = 0;
    for (;;) {
      const i = buf.indexOf(DELIM, from);
      if (i < 0) break;
      if (i < heldEnd) this.emit(this.size - (heldEnd - i));
      else {
        this.add(buf.subarray(Math.max(from, heldEnd), i));
        if (this.overflowed) return;
        this.emit(this.size);
      }
      from = i + DELIM.length;
      heldEnd = 0;
    }
    this.add(buf.subarray(Math.max(from, heldEnd)));
  }

  private add(b: Buffer): void {
    if (b.length === 0) return;
    this.size += b.length;
    if (this.size > this.maxFrame) {
      this.overflowed = true;
      this.parts = [];
      this.size = 0;
      this.onOverflow();
      return;
    }
    this.parts.push(b);
  }

  /** Emits the first `len` held bytes as a frame and drops everything held. */
  private emit(len: number): void {
    const all = Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    this.onFrame(all.subarray(0, len));
  }

  /** The last `n` held bytes (n is at most 2: walks back over the last parts only). */
  private tail(n: number): Buffer {
    const out: Buffer[] = [];
    let need = n;
    for (let k = this.parts.length - 1; k >= 0 && need > 0; k--) {
      const p = this.parts[k]!;
      out.unshift(p.subarray(Math.max(0, p.length - need)));
      need -= Math.min(need, p.length);
    }
    return Buffer.concat(out);
  }
}

/**
 * Watches the guest's listening TCP ports over one long-running SSH channel and calls `onChange` with the
 * full set whenever it changes. Ends when `signal` aborts, the channel closes, or the guest sends a frame
 * larger than MAX_PORTS_FRAME_BYTES (then it rejects: the caller backs off before watching again).
 */
export async function watchGuestPorts(
  session: GuestSession,
  guestIp: string,
  onChange: (ports: Set<number>) => void,
  signal: AbortSignal,
  maxFrame = MAX_PORTS_FRAME_BYTES,
): Promise<void> {
  let last = '';
  const stop = new AbortController();
  let overflow = false;
  const splitter = new FrameSplitter(
    maxFrame,
    (frame) => {
      const ports = listeningPorts(frame.toString('utf8'), guestIp);
      const key = [...ports].sort((a, b) => a - b).join(',');
      if (key !== last) {
        last = key;
        onChange(ports);
      }
    },
    () => {
      overflow = true;
      stop.abort();
    },
  );
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      splitter.push(chunk);
      cb();
    },
  });
  await session
    .exec(LISTEN_WATCH_COMMAND, { stdout: sink, signal: AbortSignal.any([signal, stop.signal]) })
    .catch(() => undefined);
  if (overflow)
    throw new BangerError(ErrorCode.ResourceExhausted, `the guest sent a port listing larger than ${maxFrame} bytes`);
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

/** The guest's listening TCP ports (`ss` in the guest, output capped and timed out), and which the host reaches. */
export async function listGuestPorts(
  session: GuestSession,
  vm: { name: string; hostAddress: string },
  forwards: ReadonlySet<number>,
  signal?: AbortSignal,
): Promise<VmPorts> {
  const r = await capturedExec(session, 'ss -H -ltnp', { signal, maxBytes: 1024 * 1024, timeoutMs: 15_000 });
  if (r.code !== 0) throw new BangerError(ErrorCode.Internal, `ss failed in the guest: ${r.stderr.trim().slice(0, 500)}`);
  const seen = new Set<string>();
  const ports = parseSs(r.stdout)
    .filter((l) => {
      const key = `${l.address}:${l.port}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    })
    .map((l) => {
      const forwarded = l.port === 22 || forwards.has(l.port);
      const host = dnsName(vm.name);
      return {
        port: l.port,
        address: l.address,
        process: l.process,
        forwarded,
        url: forwarded ? (l.port === 22 ? `ssh://root@${host}` : `http://${host}:${l.port}/`) : null,
      };
    })
    .sort((a, b) => a.port - b.port);
  return { name: vm.name, dnsName: dnsName(vm.name), hostAddress: vm.hostAddress, ports };
}
