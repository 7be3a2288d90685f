/**
 * `poolUse` (control queue): what the job's GPU pool is doing, so a queued job can say why it waits
 * (`queued: waiting for a slot in pool gpu (2/2 busy, 1 live worker)`). Read-only, from the server.
 */
import { configSlots, poolUse, type PoolUse } from '../src/client/pools';
import type { CommonDeps } from './deps';

export function createPoolActivities(deps: CommonDeps) {
  return {
    async poolUse(r: { pool: string }): Promise<Pick<PoolUse, 'pool' | 'queue' | 'slots' | 'busy' | 'workers'>> {
      const u = await poolUse(deps.client, r.pool, configSlots(deps.config, r.pool), { namespace: deps.config.server.namespace });
      return { pool: u.pool, queue: u.queue, slots: u.slots, busy: u.busy, workers: u.workers };
    },
  };
}
