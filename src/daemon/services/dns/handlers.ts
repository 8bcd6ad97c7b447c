import { DnsMethods } from '../../../protocol/dns.js';
import type { DnsVmEntry } from '../../../protocol/dns.js';
import { handler, type Handler } from '../../rpc/server.js';
import type { DnsHostIntegration } from './host-integration.js';

export interface DnsHandlerDeps {
  dnsHost: DnsHostIntegration;
  /** Every VM with its current address (undefined/null while it has none). */
  listVms: () => DnsVmEntry[];
}

/** Handlers of dns.install, dns.uninstall and dns.status. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function dnsHandlers(d: DnsHandlerDeps): Handler<any>[] {
  return [
    handler(DnsMethods.dnsInstall, null, async (_p, ctx) => d.dnsHost.install(d.listVms(), ctx.signal)),
    handler(DnsMethods.dnsUninstall, null, async (_p, ctx) => d.dnsHost.uninstall(ctx.signal)),
    handler(DnsMethods.dnsStatus, null, async (_p, ctx) => d.dnsHost.status(d.listVms(), ctx.signal)),
  ];
}
