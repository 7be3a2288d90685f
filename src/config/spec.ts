/**
 * The one job-spec pipeline, used by the CLI, the client, RetrainModel's need-check and the
 * `prepareJob` activity alike:
 *
 *   overrides ──buildSpec──▶ JobSpec ──prepareSpec──▶ PreparedJob
 *   JSON text ──parseSpecJson──▶ JobSpec
 *
 * so `kiln submit` rejects exactly the specs the control worker would, before anything starts.
 */
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { ConfigError, ErrorType } from '../shared/errors';
import { unknownName } from '../shared/names';
import { compileParamsSchema, formatIssues } from '../shared/params';
import { JobIdSchema, JobSpecSchema, timeoutProblems, type JobSpec, type JobSpecInput, type PreparedJob, type Timeouts, type Trigger } from '../shared/spec';
import type { KilnConfig } from './load';

/** What a caller may change on a model's spec from temporal.yaml. */
export interface SpecOverrides {
  params?: Record<string, unknown>;
  pool?: string;
  gpus?: number;
  trigger?: Trigger;
  datasetFingerprint?: string;
  timeouts?: JobSpecInput['timeouts'];
  retention?: JobSpecInput['retention'];
  dataset?: string;
  onLostCheckpoints?: JobSpecInput['onLostCheckpoints'];
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
  if (!m) throw new ConfigError('job spec', [`model: ${unknownName('model', model, Object.keys(config.models), config.file)}`]);
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
    onLostCheckpoints: o.onLostCheckpoints,
  };
  const r = JobSpecSchema.safeParse(raw);
  if (!r.success) throw new ConfigError('job spec', formatIssues('spec', r.error));
  return r.data;
}

/** Every problem a spec has against this config (id, trainer, params, pool), by path. */
function specProblems(config: KilnConfig, spec: JobSpec, jobId: string): { problems: string[]; params: Record<string, unknown> } {
  const problems: string[] = [];
  if (!config.models[spec.model]) problems.push(`model: ${unknownName('model', spec.model, Object.keys(config.models), config.file)}`);
  const idCheck = JobIdSchema.safeParse(jobId);
  if (!idCheck.success) problems.push(...formatIssues('jobId', idCheck.error));
  const trainer = config.trainers[spec.trainer];
  let params: Record<string, unknown> = spec.params;
  if (!trainer) {
    problems.push(`trainer: ${unknownName('trainer', spec.trainer, Object.keys(config.trainers), config.file)}`);
  } else {
    const r = compileParamsSchema(trainer.params).safeParse(spec.params);
    if (!r.success) problems.push(...formatIssues('params', r.error));
    else params = r.data;
  }
  if (!config.workers.pools[spec.pool]) problems.push(`pool: ${unknownName('pool', spec.pool, Object.keys(config.workers.pools), config.file)}`);
  problems.push(...timeoutProblems(effectiveTimeouts(config, spec)));
  return { problems, params };
}

/** Timeouts as the job will run them: config < model < spec. */
function effectiveTimeouts(config: KilnConfig, spec: JobSpec): Timeouts {
  const t = { ...config.timeouts, ...(config.models[spec.model]?.timeouts ?? {}) };
  const o = spec.timeouts ?? {};
  return {
    heartbeatMs: o.heartbeat ?? t.heartbeat,
    stallMs: o.stall ?? t.stall,
    startToCloseMs: o.startToClose ?? t.startToClose,
    cancelGraceMs: o.cancelGrace ?? t.cancelGrace,
    maxAttempts: o.maxAttempts ?? t.maxAttempts,
    maxInterruptions: o.maxInterruptions ?? t.maxInterruptions ?? null,
  };
}

function promotionOf(config: KilnConfig, model: string): PreparedJob['promotion'] {
  const p = config.models[model]?.promotion;
  if (!p) return null;
  return { metric: p.metric, direction: p.direction, minImprovement: p.minImprovement, improvementKind: p.improvementKind, mode: p.mode, approvalTimeoutMs: p.approvalTimeout };
}

/**
 * Resolves a spec against the config: trainer defaults filled in, timeouts and retention merged
 * (config < model < spec), with the dataset version the caller found (src/datasets). Bad input throws a non-retryable `InvalidJobSpec` naming every problem.
 */
export function prepareSpec(config: KilnConfig, spec: JobSpec, jobId: string, datasetFingerprint: string): PreparedJob {
  const { problems, params } = specProblems(config, spec, jobId);
  if (problems.length) {
    throw ApplicationFailure.nonRetryable(`invalid job spec for ${jobId}:\n${problems.map((p) => `  - ${p}`).join('\n')}`, ErrorType.InvalidJobSpec, { problems });
  }
  const trainer = config.trainers[spec.trainer]!;
  const model = config.models[spec.model];
  const root = config.artifactsRoot;
  const workDir = path.join(root, 'jobs', jobId);
  // The id alphabet already excludes separators; this guards the join itself.
  if (path.relative(root, workDir).startsWith('..')) {
    throw ApplicationFailure.nonRetryable(`job id ${jobId} would escape artifacts.root`, ErrorType.InvalidJobSpec);
  }
  return {
    jobId,
    spec,
    params,
    datasetFingerprint,
    timeouts: effectiveTimeouts(config, spec),
    retention: { ...config.retention, ...(model?.retention ?? {}), ...(spec.retention ?? {}) },
    requiredMetrics: model?.requiredMetrics ?? [],
    promotion: promotionOf(config, spec.model),
    evaluate: { command: Boolean(trainer.evaluate.command), queue: trainer.evaluate.queue, timeoutMs: trainer.evaluate.timeout },
    progressIntervalMs: config.workers.progressInterval,
    historyEvents: config.workers.historyEvents,
    workDir,
    onLostCheckpoints: spec.onLostCheckpoints ?? model?.onLostCheckpoints ?? 'fail',
  };
}

/** Validates the spec exactly as the control worker will (trainer, params, pool) before starting. */
export function validateSpec(config: KilnConfig, spec: JobSpec, jobId: string): void {
  const { problems } = specProblems(config, spec, jobId);
  if (problems.length) throw new ConfigError('job spec', problems);
}

/**
 * Config drift: the job was validated against a temporal.yaml whose section for the job's model
 * (KilnConfig.jobHashes) differs from the one this worker loaded (the file was edited and the worker
 * not restarted). Sections that may differ per host (server, workers, storage, ...) do not count. The rule (docs/operations.md,
 * "Config drift"): the worker refuses the job, non-retryably, saying both hashes and what to do.
 * A spec without configHash (an old client) is not checked.
 */
export function configDrift(config: KilnConfig, spec: JobSpec, jobId: string, workerId: string): ApplicationFailure | null {
  const mine = config.jobHashes[spec.model];
  // A model this worker does not know is refused by the spec checks, with their own words.
  if (!spec.configHash || !mine || spec.configHash === mine) return null;
  return ApplicationFailure.nonRetryable(
    `worker config mismatch: worker ${workerId} runs ${config.file} as it was when the worker started, where model ${spec.model} (models.${spec.model}, its trainer, retention, timeouts) has config hash ${mine}, but job ${jobId} was validated against config hash ${spec.configHash}; temporal.yaml changed without a worker restart: restart the workers (kiln dev: stop and start it; systemd: systemctl restart 'kiln-worker-*'), check with kiln doctor, then submit again`,
    ErrorType.WorkerConfigMismatch,
    { workerConfigHash: mine, jobConfigHash: spec.configHash },
  );
}

