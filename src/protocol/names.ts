import { z } from 'zod';

/**
 * Names and identifiers that cross the socket and reach the host's network configuration. One check each,
 * shared by the daemon's config, its services, the VMM argv builders and the CLI.
 */

/** VM names are DNS labels (they become NAME.vm): lowercase letters, digits and inner hyphens, 1-63 chars. */
export const VM_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** The DNS name a VM answers to on the host (`fix-42` -> `fix-42.vm`). */
export function dnsName(vmName: string): string {
  return `${vmName}.vm`;
}

/** A unicast MAC address, six colon-separated hex octets (either case). */
export const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
export const macSchema = z.string().regex(MAC_RE, 'a MAC address such as 52:54:00:12:34:56');

/** A Linux network interface name: 1-15 characters (IFNAMSIZ-1) of letters, digits, `_`, `.` and `-`. */
export const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;
export const interfaceNameSchema = z.string().regex(IFNAME_RE, 'an interface name of 1-15 letters, digits, _, . or -');
