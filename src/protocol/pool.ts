import { z } from 'zod';
import { method } from './common.js';

/**
 * RPC methods of `banger pool`: warm pools, VMs of an image booted ahead and parked (paused) so that
 * `vm run` / `vm create --start` with the pool's options takes one instead of booting.
 */

export const poolSetParamsSchema = z.object({
  /** The image whose pool this is (its VMs have that image's default CPUs, memory and disk). */
  image: z.string().min(1),
  /** VMs kept parked; 0 removes the pool and its VMs. */
  size: z.number().int().min(0).max(16),
});
export type PoolSetParams = z.infer<typeof poolSetParamsSchema>;

export const poolInfoSchema = z.object({
  image: z.string(),
  size: z.number(),
  /** Parked now: a `vm run` with the pool's options takes one of these. */
  ready: z.number(),
  /** Being booted to refill the pool. */
  filling: z.number(),
  /** VMs taken from this pool since the daemon started. */
  taken: z.number(),
  /** Why the last refill failed, if it did (the pool retries). */
  lastError: z.string().nullable(),
});
export type PoolInfo = z.infer<typeof poolInfoSchema>;

export const PoolMethods = {
  set: method('pool.set', poolSetParamsSchema, poolInfoSchema),
  status: method('pool.status', null, z.array(poolInfoSchema)),
} as const;
