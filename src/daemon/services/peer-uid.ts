/**
 * Who is on the other end of a loopback connection or datagram: the kernel's socket tables say which uid
 * owns the peer's socket. The daemon serves guest ports and DNS on loopback addresses, which every local user
 * can reach; these let it tell its owner from the others.
 */
import type net from 'node:net';
import { readFile } from 'node:fs/promises';
import { socketOwner, udpSocketOwner } from '../../shared/proc-net.js';

/**
 * The uid of the local process that opened `sock`, a loopback connection this process accepted: the owner of
 * the other end in /proc/net/tcp (or tcp6, for a dual-stack client). undefined when it cannot be found.
 */
export async function loopbackPeerUid(sock: net.Socket): Promise<number | undefined> {
  const { remoteAddress, remotePort, localAddress, localPort } = sock;
  if (!remoteAddress || !remotePort || !localAddress || !localPort) return undefined;
  const plain = (a: string) => a.replace(/^::ffff:/, '');
  // The peer's socket: its own end is our remote end, and its peer is us.
  const theirs = { address: plain(remoteAddress), port: remotePort };
  const ours = { address: plain(localAddress), port: localPort };
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const uid = socketOwner(await readFile(table, 'utf8').catch(() => ''), theirs, ours);
    if (uid !== undefined) return uid;
  }
  return undefined;
}

/** The uid of the local process that sent a UDP datagram from `address:port`, from /proc/net/udp{,6}. */
export async function udpPeerUid(address: string, port: number): Promise<number | undefined> {
  const from = { address: address.replace(/^::ffff:/, ''), port };
  for (const table of ['/proc/net/udp', '/proc/net/udp6']) {
    const uid = udpSocketOwner(await readFile(table, 'utf8').catch(() => ''), from);
    if (uid !== undefined) return uid;
  }
  return undefined;
}

/** The uid of a system user by name, from /etc/passwd (undefined: no such user). */
export async function systemUid(name: string, passwd = '/etc/passwd'): Promise<number | undefined> {
  const text = await readFile(passwd, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [user, , uid] = line.split(':');
    if (user === name && uid !== undefined && /^\d+$/.test(uid)) return Number(uid);
  }
  return undefined;
}
