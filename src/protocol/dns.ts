import { RequestType } from 'vscode-jsonrpc';
import type { WireErrorData } from '../errors/wire.js';

/**
 * RPC methods of `banger dns`: hooking `<name>.vm` into the host's name resolution. The daemon does
 * the work (it runs as root and keeps the names current afterwards).
 */

/** How `.vm` names reach host programs: systemd-resolved's routing domain, or a block in /etc/hosts. */
export type DnsMechanism = 'resolved' | 'hosts';

/** A VM as the DNS integration sees it; `address` is undefined while it has none. */
export interface DnsVmEntry {
  name: string;
  address?: string | null;
}

export interface DnsStatus {
  /** `banger dns install` has been done and not undone. */
  installed: boolean;
  mechanism: DnsMechanism | null;
  /** systemd-resolved runs on this host (install then uses it). */
  resolvedActive: boolean;
  /** Address banger's DNS server is configured to answer on. */
  dnsAddress: string;
  /** With mechanism 'hosts': the file holding the names. */
  hostsFile?: string;
  /** With mechanism 'resolved': the link carrying the ~vm routing domain. */
  link?: string;
  /** One line for a person. */
  detail: string;
  /** Names that resolve now, with their addresses (`fix-42.vm`). */
  names: { name: string; address: string }[];
}

function method<P, R>(name: string) {
  return new RequestType<P, R, WireErrorData>(name);
}

export const DnsMethods = {
  dnsInstall: method<void, DnsStatus>('dns.install'),
  dnsUninstall: method<void, DnsStatus>('dns.uninstall'),
  dnsStatus: method<void, DnsStatus>('dns.status'),
} as const;
