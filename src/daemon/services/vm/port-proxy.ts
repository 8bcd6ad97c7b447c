import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../../shared/logger.js';
import { loopbackPeerUid } from '../peer-uid.js';

export interface GuestPortProxyDeps {
  log: Logger;
  vmName: string;
  /** The VM's loopback address: each guest port is published on it under the same number. */
  hostAddress: string;
  /** A TCP connection to `port` inside the guest (through the VM's SSH connection). */
  dial: (port: number) => Promise<Duplex>;
  /** Whose connections are let through: the daemon's own uid and root. */
  allowedUids: ReadonlySet<number>;
  /** The uid that opened an accepted connection (default: {@link loopbackPeerUid}); undefined is refused. */
  peerUid?: (sock: net.Socket) => Promise<number | undefined>;
  /** Connections open at once through one VM's ports; past it new ones are refused. */
  maxConnections?: number;
}

const MAX_CONNECTIONS = 512;

/**
 * A VM's guest ports on its loopback address, open to the VM's owner only. Every local user can connect to
 * any loopback address, so a plain forward (QEMU's hostfwd) would let another user of the host into a
 * server in someone else's guest. Here the daemon listens itself, asks the kernel which uid opened each
 * connection, closes it at once unless that is the daemon's own uid or root, and carries the rest to the
 * guest port over the VM's SSH connection.
 */
export class GuestPortProxy {
  private readonly servers = new Map<number, net.Server>();
  private readonly clients = new Set<net.Socket>();
  private readonly guests = new Set<Duplex>();
  private readonly refusals = new Map<number | 'unknown', number>();
  private closed = false;

  constructor(private readonly d: GuestPortProxyDeps) {}

  /** Publishes guest port `port` on the VM's address; fails (EADDRINUSE...) when it cannot listen there. */
  async add(port: number): Promise<void> {
    if (this.closed || this.servers.has(port)) return;
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => void this.accept(port, sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.d.hostAddress, port, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.d.log.warn({ vm: this.d.vmName, port, err: err.message }, 'guest port listener failed'));
    if (this.closed) server.close();
    else this.servers.set(port, server);
  }

  /** Stops accepting on `port`; connections already carried go on until either end closes. */
  async remove(port: number): Promise<void> {
    const server = this.servers.get(port);
    this.servers.delete(port);
    server?.close();
  }

  /** The VM stopped or was let go of: every listener and connection ends. */
  close(): void {
    this.closed = true;
    for (const s of this.servers.values()) s.close();
    this.servers.clear();
    for (const c of [...this.clients, ...this.guests]) c.destroy();
    this.clients.clear();
    this.guests.clear();
  }

  private async accept(port: number, sock: net.Socket): Promise<void> {
    sock.on('error', () => sock.destroy());
    const uid = await (this.d.peerUid ?? loopbackPeerUid)(sock).catch(() => undefined);
    if (uid === undefined || !this.d.allowedUids.has(uid)) {
      this.refused(port, uid);
      sock.destroy();
      return;
    }
    if (this.closed || this.clients.size >= (this.d.maxConnections ?? MAX_CONNECTIONS)) {
      sock.destroy();
      return;
    }
    this.clients.add(sock);
    sock.once('close', () => this.clients.delete(sock));
    let guest: Duplex;
    try {
      guest = await this.d.dial(port);
    } catch (e) {
      this.d.log.info({ vm: this.d.vmName, port, err: (e as Error).message }, 'guest port did not accept a connection');
      sock.destroy();
      return;
    }
    if (this.closed || sock.destroyed) {
      guest.destroy();
      return;
    }
    this.guests.add(guest);
    const end = () => {
      sock.destroy();
      guest.destroy();
      this.guests.delete(guest);
    };
    // Each direction ends on its own: a client that shuts down writing still gets the whole reply, and a
    // guest that closes first has its last bytes flushed to the client before the socket ends. The pair
    // goes once both directions are done, the client socket closes, or either side fails.
    let ended = 0;
    const halfDone = () => {
      if (++ended === 2) end();
    };
    guest.on('error', end);
    sock.on('error', end);
    sock.on('close', end);
    sock.pipe(guest).on('finish', halfDone);
    guest.pipe(sock).on('finish', halfDone);
    sock.resume();
  }

  /** Logged the first time for each uid and then every 100th, so another user cannot flood the log. */
  private refused(port: number, uid: number | undefined): void {
    const key = uid ?? 'unknown';
    const n = (this.refusals.get(key) ?? 0) + 1;
    this.refusals.set(key, n);
    if (n === 1 || n % 100 === 0)
      this.d.log.warn({ vm: this.d.vmName, port, uid: uid ?? null, refused: n }, "refused a connection to a guest port: not the VM owner's");
  }
}
