/**
 * Client-side job operations shared by the CLI, `kiln dev --demo`, tests and benchmarks.
 * Everything reads the truth from Temporal: there is no job table.
 */
import * as crypto from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { resolveJob } from '../activities/prepare';
import type { KilnConfig } from './config/load';
import { cancelSignal, pauseSignal, progressQuery, resumeSignal, TASK_QUEUE_CONTROL, type JobProgress } from './defs';
import { ConfigError } from './errors';
import { JobSpecSchema, type JobSpec, type JobSpecInput, type JobSummary, type Trigger } from './job';
import { formatIssues } from './params';
import { KilnModel, KilnPhase, KilnTrigger } from './searchAttributes';
import type { TrainingJob } from '../workflows/trainingJob';

export interface SpecOverrides {
  params?: Record<string, unknown>;
  pool?: string;
  gpus?: number;
  trigger?: Trigger;
  datasetFingerprint?: string;
  timeouts?: JobSpecInput['timeouts'];
  retention?: JobSpecInput['retention'];
  dataset?: string;
}

/** Max size of a job spec accepted from outside (CLI JSON, API). Larger is refused before parsing. */
export const MAX_SPEC_BYTES = 256 * 1024;
const MAX_DEPTH = 32;

function depth(v: unknown, d = 0): number {
  if (d > MAX_DEPTH) return d;
  if (v && typeof v === 'object') {
    let m = d;
    for (const x of Object.values(v)) m = Math.max(m, depth(x, d + 1));
    return m;
  }
  return d;
}

/** Parses a JSON job spec from outside: size and nesting are checked before zod sees it. */
export function parseSpecJson(text: string, source = 'job spec'): JobSpec {
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_SPEC_BYTES) throw new ConfigError(source, [`is ${bytes} bytes; the limit is ${MAX_SPEC_BYTES} (params belong in the spec, data does not)`]);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(source, [`is not valid JSON: ${(err as Error).message}`]);
  }
  if (depth(raw) > MAX_DEPTH) throw new ConfigError(source, [`is nested deeper than ${MAX_DEPTH} levels`]);
  const r = JobSpecSchema.safeParse(raw);
  if (!r.success) throw new ConfigError(source, formatIssues('spec', r.error));
  return r.data;
}

/** A model's spec from temporal.yaml plus overrides. Unknown model → a clear error listing known ones. */
export function buildSpec(config: KilnConfig, model: string, o: SpecOverrides = {}): JobSpec {
  const m = config.models[model];
  if (!m) {
    const known = Object.keys(config.models);
    throw new ConfigError('job spec', [`model: unknown model "${model}" (models in ${config.file}: ${known.join(', ') || 'none'})`]);
  }
  const raw: JobSpecInput = {
    model,
    trainer: m.trainer,
    params: { ...m.params, ...(o.params ?? {}) },
    dataset: o.dataset ?? m.dataset,
    datasetFingerprint: o.datasetFingerprint,
    pool: o.pool ?? m.pool,
    gpus: o.gpus ?? m.gpus,
    trigger: o.trigger ?? 'manual',
    timeouts: o.timeouts,
    retention: o.retention,
  };
  const r = JobSpecSchema.safeParse(raw);
  if (!r.success) throw new ConfigError('job spec', formatIssues('spec', r.error));
  return r.data;
}

export function newJobId(model: string): string {
  return `train-${model}-${crypto.randomBytes(4).readUInt32BE().toString(36).padStart(6, '0').slice(-6)}`;
}

/** `spirals · example · lr=0.1 epochs=5` for the UI's static summary. */
export function staticSummary(spec: JobSpec): string {
  const params = Object.entries(spec.params)
    .slice(0, 6)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join(' ');
  return `${spec.model} · ${spec.trainer}${params ? ` · ${params}` : ''} · pool ${spec.pool}×${spec.gpus}`.slice(0, 400);
}

/** Validates the spec exactly as the control worker will (trainer, params, pool) before starting. */
export function validateSpec(config: KilnConfig, spec: JobSpec, jobId: string): void {
  try {
    resolveJob(config, spec, jobId);
  } catch (err) {
    if (err instanceof ApplicationFailure) {
      const problems = (err.details?.[0] as { problems?: string[] } | undefined)?.problems ?? [err.message];
      throw new ConfigError('job spec', problems);
    }
    throw err;
  }
}

export interface SubmitOptions {
  jobId?: string;
  taskQueue?: string;
}

export async function submitJob(client: Client, config: KilnConfig, spec: JobSpec, o: SubmitOptions = {}): Promise<WorkflowHandleWithFirstExecutionRunId<typeof TrainingJob>> {
  const jobId = o.jobId ?? newJobId(spec.model);
  validateSpec(config, spec, jobId);
  return client.workflow.start<typeof TrainingJob>('TrainingJob', {
    taskQueue: o.taskQueue ?? TASK_QUEUE_CONTROL,
    workflowId: jobId,
    args: [spec],
    typedSearchAttributes: [
      { key: KilnModel, value: spec.model },
      { key: KilnPhase, value: 'queued' },
      { key: KilnTrigger, value: spec.trigger },
    ] as never,
    staticSummary: staticSummary(spec),
    staticDetails: `Kiln training job for model **${spec.model}** (trainer \`${spec.trainer}\`, dataset \`${spec.dataset}\`).`,
  });
}

export { WorkflowExecutionAlreadyStartedError };

export async function signalJob(client: Client, jobId: string, what: 'cancel' | 'pause' | 'resume', reason?: string): Promise<void> {
  const h = client.workflow.getHandle(jobId);
  if (what === 'cancel') await h.signal(cancelSignal, reason ? { reason } : {});
  else if (what === 'pause') await h.signal(pauseSignal);
  else await h.signal(resumeSignal);
}

export async function queryProgress(client: Client, jobId: string): Promise<JobProgress> {
  return client.workflow.getHandle(jobId).query(progressQuery);
}

/** The job's summary, from its result or (cancelled/failed runs) its memo. */
export async function jobSummary(client: Client, jobId: string): Promise<JobSummary | null> {
  const d = await client.workflow.getHandle(jobId).describe();
  const memo = d.memo as { summary?: JobSummary } | undefined;
  return memo?.summary ?? null;
}
