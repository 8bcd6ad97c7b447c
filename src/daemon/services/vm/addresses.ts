import net from 'node:net';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { describeRange, userNetworkDefaults, type LoopbackRange } from '../../../shared/user-network.js';

/**
 * Where the host reaches a VM in loopback mode: its own 127.77.x.y address (all of 127/8 is local on Linux,
 * so no setup is needed) and the host port forwarded to its sshd.
 */

/** The guest address under QEMU user networking (slirp's defaults). */
export const USER_NET = { ip: '10.0.2.15', cidr: '10.0.2.15/24', gateway: '10.0.2.2', dns: '10.0.2.3' } as const;

/** Root's VM addresses: 127.77.0.1 is banger's DNS server; VMs get .0.2 upwards (other users: user-network.ts). */
const ROOT_RANGE = userNetworkDefaults(0).range;

/** The lowest free per-VM loopback address in `range` (default root's). */
export function allocateLoopbackAddress(used: ReadonlySet<string>, range: LoopbackRange = ROOT_RANGE): string {
  for (let n = range.first; n <= range.last; n++) {
    if (n % 256 === 0 || n % 256 === 255) continue;
    const addr = `127.${range.second}.${n >> 8}.${n & 255}`;
    if (!used.has(addr)) return addr;
  }
  throw new BangerError(ErrorCode.ResourceExhausted, `no free loopback address left for another VM (${describeRange(range)})`, {
    hint: 'delete VMs you no longer need',
  });
}

/**
 * A loopback address and SSH port for a new VM. Root forwards port 22 of the VM's own address; other
 * users cannot bind below 1024 and get a free high port. An address whose port 22 something else holds
 * (a VM of another BANGER_HOME, say) is skipped.
 */
export async function allocateLoopbackEndpoint(
  usedAddresses: ReadonlySet<string>,
  usedPorts: ReadonlySet<number>,
  isRoot: boolean,
  range: LoopbackRange = ROOT_RANGE,
): Promise<{ hostAddress: string; sshPort: number }> {
  const used = new Set(usedAddresses);
  let hostAddress = allocateLoopbackAddress(used, range);
  while (isRoot && !(await isPortFree(hostAddress, 22))) {
    used.add(hostAddress);
    hostAddress = allocateLoopbackAddress(used, range);
  }
  const sshPort = isRoot ? 22 : await pickFreePort(hostAddress, usedPorts);
  return { hostAddress, sshPort };
}

/** Asks the kernel for a free TCP port on `host`, avoiding `exclude` (ports other VMs hold). */
export async function pickFreePort(host: string, exclude: ReadonlySet<number>): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, host, () => {
        const addr = s.address();
        s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
      });
    });
    if (port && !exclude.has(port)) return port;
  }
  throw new BangerError(ErrorCode.ResourceExhausted, `no free TCP port on ${host} for the VM's SSH forward`, {
    hint: 'free some ports, or delete VMs you no longer need',
  });
}

/** Whether `port` on `host` can be bound right now. */
export function isPortFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}
