/**
 * banger's DNS server: answers `<name>.vm` (A) and reverse lookups of VM addresses (PTR) from the
 * daemon's live state, over UDP and TCP, on any number of addresses (loopback now, a bridge address
 * when VMs get one).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { Logger } from '../../../shared/logger.js';
import { answerQuery, type DnsZoneData } from './packet.js';

/** Seconds resolvers may cache an answer: short, since VMs come and go. */
export const DEFAULT_DNS_TTL = 5;

/** A TCP client that sends nothing for this long is disconnected (RFC 7766 suggests seconds). */
const TCP_IDLE_MS = 10_000;

export interface ListenAddress {
  host: string;
  /** 0 picks a free port (the same one for UDP and TCP). */
  port: number;
}

export interface VmDnsServerDeps {
  /** Address of the VM called `name` (without `.vm`), or undefined. */
  lookup: (name: string) => string | undefined;
  /** Name (without `.vm`) of the VM with address `ip`, or undefined. */
  reverse: (ip: string) => string | undefined;
  log: Logger;
  /** Seconds resolvers may cache answers; short, since addresses change when VMs restart. Default 5. */
  ttl?: number;
  /**
   * Whether a query from this peer gets real answers; one that does not is answered as if no VM existed
   * (NXDOMAIN), so a resolver does not hang. Default: everyone.
   */
  mayAsk?: (peer: DnsPeer) => Promise<boolean>;
}

/** Who sent a query: its address and port, and for TCP the connection. */
export interface DnsPeer {
  protocol: 'udp' | 'tcp';
  address: string;
  port: number;
  socket?: net.Socket;
}

/** A zone that knows no VM: what a peer that may not ask is told. */
const NOTHING = { lookup: () => undefined, reverse: () => undefined };

interface Endpoint {
  address: ListenAddress;
  udp: dgram.Socket;
  tcp: net.Server;
}

export class VmDnsServer {
  private readonly endpoints: Endpoint[] = [];
  private readonly tcpClients = new Set<net.Socket>();
  private readonly zone: DnsZoneData;

  constructor(private readonly deps: VmDnsServerDeps) {
    this.zone = { lookup: deps.lookup, reverse: deps.reverse, ttl: deps.ttl ?? DEFAULT_DNS_TTL };
  }

  /**
   * Starts answering on each address (UDP and TCP on the same port), in addition to the ones already
   * listened on. All or nothing: if one address cannot be bound, none of this call's stay open.
   * Returns the bound addresses (with the port chosen for port 0).
   */
  async listen(addresses: readonly ListenAddress[]): Promise<ListenAddress[]> {
    const opened: Endpoint[] = [];
    try {
      for (const a of addresses) opened.push(await this.open(a));
    } catch (e) {
      await Promise.all(opened.map((ep) => closeEndpoint(ep)));
      throw e;
    }
    this.endpoints.push(...opened);
    for (const ep of opened)
      this.deps.log.info({ dns: `${ep.address.host}:${ep.address.port}` }, 'dns server listening');
    return opened.map((ep) => ({ ...ep.address }));
  }

  /** The addresses being answered on. */
  addresses(): ListenAddress[] {
    return this.endpoints.map((ep) => ({ ...ep.address }));
  }

  /** Stops answering on every address and drops open TCP connections. */
  async close(): Promise<void> {
    for (const s of this.tcpClients) s.destroy();
    this.tcpClients.clear();
    const eps = this.endpoints.splice(0);
    await Promise.all(eps.map((ep) => closeEndpoint(ep)));
  }

  private async open(a: ListenAddress): Promise<Endpoint> {
    const family = net.isIP(a.host);
    if (family === 0) throw new BangerError(ErrorCode.InvalidArgument, `dns: '${a.host}' is not an IP address`);
    // With port 0, UDP picks the port and TCP must get the same one; retry if TCP finds it taken.
    for (let attempt = 0; ; attempt++) {
      const udp = await this.bindUdp(a, family === 6 ? 'udp6' : 'udp4');
      const port = udp.address().port;
      try {
        const tcp = await this.bindTcp({ host: a.host, port });
        return { address: { host: a.host, port }, udp, tcp };
      } catch (e) {
        await new Promise<void>((r) => udp.close(() => r()));
        if (
          a.port === 0 &&
          attempt < 5 &&
          ((e as BangerError).cause as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE'
        )
          continue;
        throw e;
      }
    }
  }

  private bindUdp(a: ListenAddress, type: 'udp4' | 'udp6'): Promise<dgram.Socket> {
    const sock = dgram.createSocket({ type });
    return new Promise((resolve, reject) => {
      sock.once('error', (err) => {
        sock.close();
        reject(bindError(a, 'udp', err));
      });
      sock.bind(a.port, a.host, () => {
        sock.removeAllListeners('error');
        sock.on('error', (err) => this.deps.log.warn({ err, dns: a.host }, 'dns udp socket error'));
        sock.on('message', (msg, rinfo) => {
          void this.allowed({ protocol: 'udp', address: rinfo.address, port: rinfo.port }).then((ok) => {
            const res = this.answer(msg, `${rinfo.address}:${rinfo.port}`, ok);
            if (res)
              sock.send(res, rinfo.port, rinfo.address, (err) => {
                if (err) this.deps.log.debug({ err }, 'dns udp send failed');
              });
          });
        });
        resolve(sock);
      });
    });
  }

  private bindTcp(a: ListenAddress): Promise<net.Server> {
    const server = net.createServer((s) => this.serveTcp(s));
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(bindError(a, 'tcp', err)));
      server.listen({ host: a.host, port: a.port, exclusive: true }, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => this.deps.log.warn({ err, dns: a.host }, 'dns tcp server error'));
        resolve(server);
      });
    });
  }

  /** DNS over TCP: each message is preceded by its length as two bytes (RFC 1035 4.2.2). */
  private serveTcp(s: net.Socket): void {
    this.tcpClients.add(s);
    const peer = `${s.remoteAddress}:${s.remotePort}`;
    // Nothing is read until it is known whether this peer gets real answers.
    let mayAsk = false;
    s.pause();
    void this.allowed({ protocol: 'tcp', address: s.remoteAddress ?? '', port: s.remotePort ?? 0, socket: s }).then((ok) => {
      mayAsk = ok;
      s.resume();
    });
    let buf = Buffer.alloc(0);
    s.setTimeout(TCP_IDLE_MS, () => s.destroy());
    s.on('error', () => s.destroy());
    s.on('close', () => this.tcpClients.delete(s));
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        const res = this.answer(msg, peer, mayAsk);
        if (!res) {
          s.destroy(); // not DNS: the stream cannot be trusted to stay framed
          return;
        }
        const framed = Buffer.alloc(2 + res.length);
        framed.writeUInt16BE(res.length, 0);
        res.copy(framed, 2);
        s.write(framed);
      }
    });
  }

  /** Whether `peer` gets real answers (a failing check says no). */
  private async allowed(peer: DnsPeer): Promise<boolean> {
    if (!this.deps.mayAsk) return true;
    return this.deps.mayAsk(peer).catch(() => false);
  }

  private answer(msg: Buffer, peer: string, mayAsk: boolean): Buffer | undefined {
    try {
      const res = answerQuery(msg, mayAsk ? this.zone : { ...this.zone, ...NOTHING });
      if (!res) this.deps.log.debug({ peer, bytes: msg.length }, 'dns: ignored a message that is not a query');
      return res;
    } catch (err) {
      this.deps.log.warn({ err, peer }, 'dns: failed to answer');
      return undefined;
    }
  }
}

function bindError(a: ListenAddress, proto: string, err: NodeJS.ErrnoException): BangerError {
  const where = `${a.host}:${a.port}/${proto}`;
  const hint =
    err.code === 'EADDRINUSE'
      ? `another program answers on ${where}: stop it, or configure another DNS address/port for banger`
      : err.code === 'EACCES'
        ? `ports below 1024 need root (or CAP_NET_BIND_SERVICE); run bangerd as root or pick a port above 1023`
        : err.code === 'EADDRNOTAVAIL'
          ? `${a.host} is not an address of this host`
          : undefined;
  return new BangerError(ErrorCode.Unavailable, `dns: cannot listen on ${where}: ${err.message}`, { hint, cause: err });
}

function closeEndpoint(ep: Endpoint): Promise<void> {
  return Promise.all([
    new Promise<void>((r) => {
      try {
        ep.udp.close(() => r());
      } catch {
        r();
      }
    }),
    new Promise<void>((r) => ep.tcp.close(() => r())),
  ]).then(() => undefined);
}
