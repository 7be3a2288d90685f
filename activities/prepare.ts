/**
 * `prepareJob` (control queue): resolves a job spec against temporal.yaml. Unknown trainers and
 * params that do not fit the trainer's schema fail here, non-retryably, before any GPU is touched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType } from '../src/errors';
import { datasetFingerprint } from '../src/fingerprint';
import { JobIdSchema, type JobSpec, type PreparedJob } from '../src/job';
import { compileParamsSchema, formatIssues } from '../src/params';
import type { KilnConfig } from '../src/config/load';
import type { CommonDeps } from './deps';

/** The pure part, shared with the CLI so `kiln submit` rejects the same specs before starting anything. */
export function resolveJob(config: KilnConfig, spec: JobSpec, jobId: string): PreparedJob {
  const problems: string[] = [];
  const idCheck = JobIdSchema.safeParse(jobId);
  if (!idCheck.success) problems.push(...formatIssues('jobId', idCheck.error));
  const trainer = config.trainers[spec.trainer];
  if (!trainer) {
    problems.push(`trainer: unknown trainer "${spec.trainer}" (defined: ${Object.keys(config.trainers).join(', ') || 'none'})`);
  }
  let params: Record<string, unknown> = spec.params;
  if (trainer) {
    const r = compileParamsSchema(trainer.params).safeParse(spec.params);
    if (!r.success) problems.push(...formatIssues('params', r.error));
    else params = r.data;
  }
  if (!config.workers.pools[spec.pool]) {
    problems.push(`pool: unknown pool "${spec.pool}" (defined: ${Object.keys(config.workers.pools).join(', ')})`);
  }
  if (problems.length) {
    throw ApplicationFailure.nonRetryable(`invalid job spec for ${jobId}:\n${problems.map((p) => `  - ${p}`).join('\n')}`, ErrorType.InvalidJobSpec, { problems });
  }
  const model = config.models[spec.model];
  const t = { ...config.timeouts, ...(model?.timeouts ?? {}) };
  const r = { ...config.retention, ...(model?.retention ?? {}), ...(spec.retention ?? {}) };
  const o = spec.timeouts ?? {};
  const root = config.artifactsRoot;
  const workDir = path.join(root, 'jobs', jobId);
  // The id alphabet already excludes separators; this guards the join itself.
  if (path.relative(root, workDir).startsWith('..')) {
    throw ApplicationFailure.nonRetryable(`job id ${jobId} would escape artifacts.root`, ErrorType.InvalidJobSpec);
  }
  const promotion = model?.promotion
    ? {
        metric: model.promotion.metric,
        direction: model.promotion.direction,
        minImprovement: model.promotion.minImprovement,
        improvementKind: model.promotion.improvementKind,
        mode: model.promotion.mode,
        approvalTimeoutMs: model.promotion.approvalTimeout,
      }
    : null;
  return {
    jobId,
    spec,
    params,
    datasetFingerprint: spec.datasetFingerprint ?? datasetFingerprint(spec.dataset, config.baseDir),
    timeouts: {
      heartbeatMs: o.heartbeat ?? t.heartbeat,
      stallMs: o.stall ?? t.stall,
      startToCloseMs: o.startToClose ?? t.startToClose,
      cancelGraceMs: o.cancelGrace ?? t.cancelGrace,
      maxAttempts: o.maxAttempts ?? t.maxAttempts,
    },
    retention: r,
    requiredMetrics: model?.requiredMetrics ?? [],
    promotion,
    evaluate: {
      command: Boolean(trainer!.evaluate.command),
      queue: trainer!.evaluate.queue,
      timeoutMs: trainer!.evaluate.timeout,
    },
    progressIntervalMs: config.workers.progressInterval,
    workDir,
  };
}

export function createPrepareJob(deps: CommonDeps) {
  return async function prepareJob(spec: JobSpec, jobId: string): Promise<PreparedJob> {
    const prepared = resolveJob(deps.config, spec, jobId);
    fs.mkdirSync(path.join(prepared.workDir, 'checkpoints'), { recursive: true });
    fs.writeFileSync(path.join(prepared.workDir, 'job.json'), JSON.stringify({ jobId, spec, params: prepared.params, datasetFingerprint: prepared.datasetFingerprint }, null, 2));
    return prepared;
  };
}
