import type { DnsPeer } from './server.js';
import { loopbackPeerUid, systemUid, udpPeerUid } from '../peer-uid.js';

/**
 * Who a daemon's DNS server answers. Root's serves the host (its names are in /etc/hosts or resolved for
 * everyone anyway). A user's answers that user, root, and systemd-resolved (which asks on behalf of whoever
 * resolves `.vm` once root routed it there): another local user asking it directly is told of no VM.
 */
export async function dnsAskers(uid: number): Promise<((peer: DnsPeer) => Promise<boolean>) | undefined> {
  if (uid === 0) return undefined;
  const resolved = await systemUid('systemd-resolve');
  const allowed = new Set([uid, 0, ...(resolved === undefined ? [] : [resolved])]);
  return async (peer) => {
    const who = peer.socket ? await loopbackPeerUid(peer.socket) : await udpPeerUid(peer.address, peer.port);
    return who !== undefined && allowed.has(who);
  };
}
