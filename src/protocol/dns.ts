import { z } from 'zod';
import { method } from './common.js';

/**
 * RPC methods of `banger dns`: hooking `<name>.vm` into the host's name resolution. The daemon does
 * the work (it runs as root and keeps the names current afterwards).
 */

/** How `.vm` names reach host programs: systemd-resolved's routing domain, or a block in /etc/hosts. */
export const DNS_MECHANISMS = ['resolved', 'hosts'] as const;
export type DnsMechanism = (typeof DNS_MECHANISMS)[number];

/** A VM as the DNS integration sees it; `address` is undefined while it has none. */
export interface DnsVmEntry {
  name: string;
  address?: string | null;
}

export const dnsStatusSchema = z.object({
  /** `banger dns install` has been done and not undone. */
  installed: z.boolean(),
  mechanism: z.enum(DNS_MECHANISMS).nullable(),
  /** systemd-resolved runs on this host (install then uses it). */
  resolvedActive: z.boolean(),
  /** Address banger's DNS server is configured to answer on. */
  dnsAddress: z.string(),
  /** With mechanism 'hosts': the file holding the names. */
  hostsFile: z.string().optional(),
  /** With mechanism 'resolved': the link carrying the ~vm routing domain. */
  link: z.string().optional(),
  /** One line for a person. */
  detail: z.string(),
  /** Names that resolve now, with their addresses (`fix-42.vm`). */
  names: z.array(z.object({ name: z.string(), address: z.string() })),
});
export type DnsStatus = z.infer<typeof dnsStatusSchema>;

export const DnsMethods = {
  install: method('dns.install', null, dnsStatusSchema),
  uninstall: method('dns.uninstall', null, dnsStatusSchema),
  status: method('dns.status', null, dnsStatusSchema),
} as const;
