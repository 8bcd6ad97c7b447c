import { PoolMethods } from '../../../protocol/pool.js';
import type { PoolService } from '../../services/pool/service.js';
import { handler, type Handler } from '../server.js';

/** pool.set, pool.status. */
export function poolHandlers(pools: PoolService): Handler[] {
  return [
    handler(PoolMethods.set, async (p) => pools.set(p.image, p.size)),
    handler(PoolMethods.status, async () => pools.status()),
  ];
}
