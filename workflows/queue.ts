/**
 * The `queued` phase of a train attempt: from the moment it is scheduled until its first progress
 * report (the trainer runs), KilnPhase is `queued` and Current Details say what it waits for, with
 * the pool's use from the `poolUse` control activity, refreshed with backoff (10 s doubling to 5 min,
 * so a day in the queue costs a few dozen history events). Not a workflow: workflows/index.ts does
 * not export it.
 */
import { ActivityCancellationType, type ActivityInterfaceFor, condition } from '@temporalio/workflow';
import type { ControlActivities } from './activityOptions';
import type { JobState } from './jobState';

/** The patch id (workflow `patched()`) of the queued phase: runs started before it replay without it. */
export const QUEUED_PHASE_PATCH = 'kiln-queued-phase';

const FIRST_REFRESH_MS = 10_000;
const MAX_REFRESH_MS = 5 * 60_000;

type PoolUseReply = Awaited<ReturnType<ControlActivities['poolUse']>>;

/** `queued: waiting for a slot in pool gpu (2/2 busy, 2 live workers)`, or that no worker polls it. */
export function queuedLine(pool: string, u: PoolUseReply | null): string {
  if (!u) return `queued: waiting for a slot in pool ${pool}`;
  const live = u.workers.filter((w) => w.live);
  if (live.length === 0) return `queued: no live worker polls ${u.queue} (start one: kiln worker gpu --pool ${pool})`;
  const use = `${u.busy}/${u.slots ?? '?'} busy, ${live.length} live worker${live.length === 1 ? '' : 's'}`;
  return u.slots !== null && u.busy < u.slots ? `queued: waiting for a worker of pool ${pool} to take it (${use})` : `queued: waiting for a slot in pool ${pool} (${use})`;
}

/**
 * Marks the attempt holding `token` queued and keeps its line current while it stays so. Runs in the
 * background; never throws (a failed or cancelled look-up leaves the last line in place).
 */
export function enterQueue(job: JobState, control: ActivityInterfaceFor<ControlActivities>, pool: string, token: string): void {
  job.queuedToken = token;
  job.setPhase('queued', queuedLine(pool, null));
  const stillQueued = () => job.phase === 'queued' && job.queuedToken === token;
  void (async () => {
    let wait = FIRST_REFRESH_MS;
    try {
      while (stillQueued()) {
        const u = await control.poolUse.executeWithOptions(
          { startToCloseTimeout: '20s', retry: { maximumAttempts: 1 }, cancellationType: ActivityCancellationType.TRY_CANCEL, summary: `pool use ${pool} (queued)` },
          [{ pool }],
        );
        if (stillQueued()) job.setPhase('queued', queuedLine(pool, u));
        if (await condition(() => !stillQueued(), wait)) return;
        wait = Math.min(wait * 2, MAX_REFRESH_MS);
      }
    } catch {
      // Cancelled with the job, or the look-up failed: the line stays as it was.
    }
  })();
}
