/**
 * What a GPU pool is doing right now, from the server alone: which workers are live, how many of
 * their slots run an attempt, and, per running attempt, its worker and the age of its last heartbeat.
 * Used by `kiln doctor` and by the `poolUse` control activity (the queued job's Current Details).
 *
 * Liveness: a worker counts as live when the server saw it poll the pool's queue within LIVE_MS, or
 * when an activity it runs heartbeated within LIVE_MS (a worker whose slots are all busy does not
 * poll). Anything older is a worker that is gone (or, on a cluster whose long poll is longer than
 * LIVE_MS, idle: `kiln dev` runs its server with a 10 s long poll).
 * Slots per worker come from temporal.yaml (pinned devices, else `slots`), as the control side sees it.
 */
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { KilnConfig } from '../config/load';
import { gpuTaskQueue } from '../shared/messages';

/** A poller or heartbeat older than this is not live. */
export const LIVE_MS = 15_000;
/** At most this many running jobs are described per call. */
const MAX_JOBS = 200;

const { TaskQueueType, TaskQueueKind, PendingActivityState } = temporal.api.enums.v1;

/** Slots per worker of a pool as temporal.yaml says: pinned devices, else `slots` (null: unknown pool). */
export function configSlots(config: KilnConfig, pool: string): number | null {
  const p = config.workers.pools[pool];
  if (!p) return null;
  return p.devices === 'auto' ? p.slots : p.devices.length;
}

export interface PoolAttempt {
  jobId: string;
  activity: string;
  worker: string;
  /** Seconds since its last heartbeat (null: none yet). */
  heartbeatAgeSec: number | null;
  live: boolean;
}

export interface PoolWorker {
  identity: string;
  /** Seconds since the server last saw it poll (null: never, it is known from a heartbeat only). */
  lastPollAgeSec: number | null;
  live: boolean;
  busy: number;
}

export interface PoolUse {
  pool: string;
  queue: string;
  workers: PoolWorker[];
  /** Live workers × slots per worker (null when the config does not say). */
  slots: number | null;
  /** Slots of live workers running an attempt. */
  busy: number;
  attempts: PoolAttempt[];
}

function tsMs(t: { seconds?: unknown; nanos?: number | null } | null | undefined): number | null {
  if (!t?.seconds) return null;
  return Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
}

const round1 = (ms: number) => Math.round(ms / 100) / 10;

/** Started attempts on this pool's workers (identity `<host>:<pid>:gpu-<pool>`), from describe of every running job. */
async function runningAttempts(client: Client, pool: string, now: number): Promise<PoolAttempt[]> {
  const ids: string[] = [];
  for await (const w of client.workflow.list({ query: 'WorkflowType = "TrainingJob" AND ExecutionStatus = "Running"' })) {
    ids.push(w.workflowId);
    if (ids.length >= MAX_JOBS) break;
  }
  const suffix = `:gpu-${pool}`;
  const out: PoolAttempt[] = [];
  await Promise.all(
    ids.map(async (jobId) => {
      const d = await client.workflow.getHandle(jobId).describe().catch(() => null);
      for (const a of d?.raw.pendingActivities ?? []) {
        const started = a.state === PendingActivityState.PENDING_ACTIVITY_STATE_STARTED || a.state === PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED;
        if (!started || !a.lastWorkerIdentity?.endsWith(suffix)) continue;
        const hb = tsMs(a.lastHeartbeatTime) ?? tsMs(a.lastStartedTime);
        const age = hb === null ? null : Math.max(0, now - hb);
        out.push({ jobId, activity: a.activityType?.name ?? '?', worker: a.lastWorkerIdentity, heartbeatAgeSec: age === null ? null : round1(age), live: age !== null && age <= LIVE_MS });
      }
    }),
  );
  return out.sort((a, b) => a.jobId.localeCompare(b.jobId));
}

export async function poolUse(client: Client, pool: string, slotsPerWorker: number | null, o: { namespace?: string; queue?: string } = {}): Promise<PoolUse> {
  const queue = o.queue ?? gpuTaskQueue(pool);
  const r = await client.workflowService.describeTaskQueue({
    namespace: o.namespace ?? client.options.namespace,
    taskQueue: { name: queue, kind: TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
    taskQueueType: TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
  });
  const now = Date.now();
  const attempts = await runningAttempts(client, pool, now);
  const workers = new Map<string, PoolWorker>();
  for (const p of r.pollers ?? []) {
    const at = tsMs(p.lastAccessTime);
    const age = at === null ? null : Math.max(0, now - at);
    const identity = p.identity || '?';
    workers.set(identity, { identity, lastPollAgeSec: age === null ? null : round1(age), live: age !== null && age <= LIVE_MS, busy: 0 });
  }
  for (const a of attempts) {
    const w = workers.get(a.worker) ?? { identity: a.worker, lastPollAgeSec: null, live: false, busy: 0 };
    w.busy += 1;
    w.live ||= a.live;
    workers.set(a.worker, w);
  }
  const list = [...workers.values()].sort((a, b) => a.identity.localeCompare(b.identity));
  const live = list.filter((w) => w.live);
  return {
    pool,
    queue,
    workers: list,
    slots: slotsPerWorker === null ? null : live.length * slotsPerWorker,
    busy: live.reduce((n, w) => n + w.busy, 0),
    attempts,
  };
}

/** `2/2 busy`, `1/2 busy, 1 worker`; what a queued job's Current Details quote. */
export function useText(u: Pick<PoolUse, 'busy' | 'slots' | 'workers'>): string {
  const live = u.workers.filter((w) => w.live).length;
  return `${u.busy}/${u.slots ?? '?'} busy, ${live} live worker${live === 1 ? '' : 's'}`;
}
