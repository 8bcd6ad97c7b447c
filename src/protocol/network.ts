import { z } from 'zod';
import { NETWORK_MODES, method } from './common.js';

/** RPC methods of `banger network`: what tap networking put on the host, and removing all of it. */

export const networkStatusSchema = z.object({
  defaultMode: z.enum(NETWORK_MODES),
  loopback: z.object({ supported: z.literal(true) }),
  tap: z.object({
    supported: z.boolean(),
    reason: z.string().optional(),
    bridge: z
      .object({ name: z.string(), subnet: z.string(), gateway: z.string(), exists: z.boolean(), up: z.boolean() })
      .optional(),
    rulesInstalled: z.boolean().optional(),
    vms: z
      .array(
        z.object({
          vmId: z.string(),
          name: z.string().nullable(),
          tap: z.string(),
          address: z.string(),
          /** The only MAC its tap passes frames from. */
          mac: z.string(),
          egress: z.boolean(),
        }),
      )
      .optional(),
  }),
});
export type NetworkStatus = z.infer<typeof networkStatusSchema>;

export const NetworkMethods = {
  status: method('network.status', null, networkStatusSchema),
  /** Removes the bridge, taps and rules; refused while tap VMs run. */
  down: method('network.down', null, networkStatusSchema),
} as const;
