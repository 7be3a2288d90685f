/**
 * One run of the load benchmark: submit every job at once, sample /proc while they run, then check
 * that each job completed exactly once (visibility, registry, trainer.log attempts) and explain the
 * stragglers from their histories.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { submitJob } from '../../src/client/jobs';
import { buildSpec } from '../../src/config/spec';
import type { JobSpec } from '../../src/shared/spec';
import { SqliteModelRegistry } from '../../src/registry/sqlite';
import { parseAttemptHeaders } from '../../test/helpers/chaos';
import { jobDir, type KilnTestEnv } from '../../test/helpers/kiln';
import { jobProcesses } from '../../test/helpers/processes';
import { percentile, RssSampler } from '../stats';

export interface JobSample {
  jobId: string;
  submitAt: number;
  /** The start call: submit → the server accepted the workflow. */
  startCallMs: number;
  trainerStartMs: number | null;
  completedMs: number | null;
  outcome: string;
  attempts: number;
}

export interface RunResult {
  run: number;
  jobs: number;
  wallMs: number;
  jobsPerSec: number;
  samples: JobSample[];
  maxConcurrentTrainers: number;
  totalSlots: number;
  visibilityCompleted: number;
  visibilityDistinct: number;
  registryVersions: number;
  registryDistinctJobs: number;
  retried: number;
  /** The slowest jobs, when far slower than the rest: what their histories say. */
  stragglers: Array<{ jobId: string; completedMs: number; trainerStartMs: number | null; why: string }>;
  rssKiB: Record<string, { start: number; max: number; end: number }>;
  loadavg: number[];
}

export interface RunOptions {
  jobs: number;
  steps: number;
  queue: string;
  totalSlots: number;
  procs: Array<{ name: string; pid: number }>;
}

/** When each job was submitted, accepted and done, and how it ended. */
interface Timeline {
  t0: number;
  submitAt: Map<string, number>;
  acceptedAt: Map<string, number>;
  doneAt: Map<string, number>;
  outcome: Map<string, string>;
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** Submits every job, 16 start calls in flight, and waits for all results. */
async function submitAll(env: KilnTestEnv, ids: string[], spec: JobSpec, queue: string): Promise<Timeline> {
  const tl: Timeline = { t0: Date.now(), submitAt: new Map(), acceptedAt: new Map(), doneAt: new Map(), outcome: new Map() };
  const results: Array<Promise<void>> = [];
  await pool(ids, 16, async (id) => {
    tl.submitAt.set(id, Date.now());
    const h: WorkflowHandle = await submitJob(env.client, env.config, spec, { jobId: id, taskQueue: queue });
    tl.acceptedAt.set(id, Date.now());
    results.push(
      h.result().then(
        (s: { outcome?: string }) => {
          tl.doneAt.set(id, Date.now());
          tl.outcome.set(id, s?.outcome ?? '?');
        },
        (err: unknown) => {
          tl.doneAt.set(id, Date.now());
          tl.outcome.set(id, `failed: ${String(err).slice(0, 200)}`);
        },
      ),
    );
  });
  await Promise.all(results);
  return tl;
}

function jobSample(env: KilnTestEnv, tl: Timeline, id: string): JobSample {
  let log = '';
  try {
    log = fs.readFileSync(path.join(jobDir(env, id), 'trainer.log'), 'utf8');
  } catch {
    /* no trainer ran */
  }
  const heads = parseAttemptHeaders(log);
  const sub = tl.submitAt.get(id)!;
  return {
    jobId: id,
    submitAt: sub,
    startCallMs: tl.acceptedAt.get(id)! - sub,
    trainerStartMs: heads[0] ? heads[0].at - sub : null,
    completedMs: tl.doneAt.has(id) ? tl.doneAt.get(id)! - sub : null,
    outcome: tl.outcome.get(id) ?? 'lost',
    attempts: heads.length,
  };
}

/** COMPLETED TrainingJob runs of this run's ids. Visibility is eventually consistent: poll until it has settled on every id. */
async function visibleCompleted(env: KilnTestEnv, prefix: string, jobs: number): Promise<Array<{ id: string; status: string }>> {
  let visible: Array<{ id: string; status: string }> = [];
  for (let i = 0; i < 50; i++) {
    visible = [];
    for await (const w of env.client.workflow.list({ query: `WorkflowType = "TrainingJob" AND ExecutionStatus = "Completed"` })) {
      if (w.workflowId.startsWith(`${prefix}-`)) visible.push({ id: w.workflowId, status: w.status.name });
    }
    if (visible.length >= jobs) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return visible;
}

/** Up to 5 of the slowest jobs, if slower than 1.5 × the run's p90 of submit → completed. */
async function stragglers(env: KilnTestEnv, samples: JobSample[]): Promise<RunResult['stragglers']> {
  const doneMs = samples.map((x) => x.completedMs ?? Infinity);
  const slowLimit = 1.5 * percentile(doneMs.filter(Number.isFinite), 90);
  const out: RunResult['stragglers'] = [];
  for (const x of [...samples].sort((a, b) => (b.completedMs ?? Infinity) - (a.completedMs ?? Infinity)).slice(0, 5)) {
    if ((x.completedMs ?? Infinity) <= slowLimit) break;
    out.push({ jobId: x.jobId, completedMs: x.completedMs ?? NaN, trainerStartMs: x.trainerStartMs, why: await diagnose(env, x.jobId) });
  }
  return out;
}

export async function oneRun(env: KilnTestEnv, run: number, o: RunOptions): Promise<RunResult> {
  const prefix = `load-${Date.now().toString(36)}-r${run}`;
  const ids = Array.from({ length: o.jobs }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);
  const spec = buildSpec(env.config, 'spirals', { params: { epochs: 1, steps_per_epoch: o.steps, checkpoint_every: o.steps, step_delay_ms: 0 } });

  let maxTrainers = 0;
  const sampler = new RssSampler(o.procs, 50, () => {
    const n = jobProcesses(env.home).filter((p) => p.mode === 'train').length;
    if (n > maxTrainers) maxTrainers = n;
  });
  const tl = await submitAll(env, ids, spec, o.queue);
  const wallMs = Math.max(...tl.doneAt.values()) - tl.t0;
  sampler.stop();

  const samples = ids.map((id) => jobSample(env, tl, id));
  const visible = await visibleCompleted(env, prefix, o.jobs);
  const slow = await stragglers(env, samples);
  const reg = new SqliteModelRegistry(path.join(env.home, 'registry.sqlite'));
  const versions = (await reg.list()).filter((v) => v.jobId.startsWith(`${prefix}-`));
  await reg.close();

  return {
    run,
    jobs: o.jobs,
    wallMs,
    jobsPerSec: o.jobs / (wallMs / 1000),
    samples,
    maxConcurrentTrainers: maxTrainers,
    totalSlots: o.totalSlots,
    visibilityCompleted: visible.length,
    visibilityDistinct: new Set(visible.map((v) => v.id)).size,
    registryVersions: versions.length,
    registryDistinctJobs: new Set(versions.map((v) => v.jobId)).size,
    retried: samples.filter((s) => s.attempts > 1).length,
    stragglers: slow,
    rssKiB: sampler.kib,
    loadavg: os.loadavg(),
  };
}

// temporal.api.enums.v1.TimeoutType
const TIMEOUT_TYPES: Record<number, string> = { 1: 'start-to-close', 2: 'schedule-to-start', 3: 'schedule-to-close', 4: 'heartbeat' };

/** Retries and timeouts in a job's history, e.g. "prepareJob attempt 2 after: activity StartToClose timeout". */
async function diagnose(env: KilnTestEnv, jobId: string): Promise<string> {
  try {
    const events = (await env.client.workflow.getHandle(jobId).fetchHistory()).events ?? [];
    const typeOf = new Map<string, string>();
    const out: string[] = [];
    let wfTaskTimeouts = 0;
    for (const e of events) {
      const id = String(e.eventId);
      if (e.activityTaskScheduledEventAttributes) typeOf.set(id, e.activityTaskScheduledEventAttributes.activityType?.name ?? '?');
      const st = e.activityTaskStartedEventAttributes;
      if (st && (st.attempt ?? 1) > 1) {
        const f = st.lastFailure;
        const t = f?.timeoutFailureInfo?.timeoutType;
        out.push(`${typeOf.get(String(st.scheduledEventId)) ?? '?'} attempt ${st.attempt} after ${t ? `a ${TIMEOUT_TYPES[Number(t)] ?? String(t)} timeout` : (f?.message ?? '?').slice(0, 80)}`);
      }
      if (e.workflowTaskTimedOutEventAttributes) wfTaskTimeouts += 1;
    }
    if (wfTaskTimeouts) out.push(`${wfTaskTimeouts} workflow task timeout(s)`);
    return out.join('; ') || 'no retry or timeout in history (slow, not lost)';
  } catch (err) {
    return `history unavailable: ${String(err).slice(0, 80)}`;
  }
}
