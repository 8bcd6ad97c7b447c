import { DnsMethods, type DnsVmEntry } from '../../../protocol/dns.js';
import type { DnsHostIntegration } from '../../services/dns/host-integration.js';
import { handler, type Handler } from '../server.js';

export interface DnsHandlerDeps {
  dnsHost: DnsHostIntegration;
  /** Every VM with its current address (undefined/null while it has none). */
  listVms: () => DnsVmEntry[];
}

/** dns.install, dns.uninstall and dns.status. */
export function dnsHandlers(d: DnsHandlerDeps): Handler[] {
  return [
    handler(DnsMethods.install, async (_p, ctx) => d.dnsHost.install(d.listVms(), ctx.signal)),
    handler(DnsMethods.uninstall, async (_p, ctx) => d.dnsHost.uninstall(ctx.signal)),
    handler(DnsMethods.status, async (_p, ctx) => d.dnsHost.status(d.listVms(), ctx.signal)),
  ];
}
