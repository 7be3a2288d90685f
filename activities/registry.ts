/**
 * Registry activities (control queue): register the trained version (idempotent by job id, so a
 * retried activity never creates a second version), decide promotion, and settle approvals. Job
 * cancellation and the end-of-job record are in jobEnd.ts.
 */
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { ErrorType } from '../src/shared/errors';
import type { PreparedJob } from '../src/shared/spec';
import type { TrainResult } from '../src/shared/summary';
import { evaluatePromotion } from '../src/registry/promotion';
import { runOnPromote } from '../src/registry/onPromote';
import { RegistryError, type ModelRegistry, type ModelVersion } from '../src/registry/types';
import type { CommonDeps } from './deps';

export interface RegisterVersionInput {
  prepared: PreparedJob;
  train: TrainResult;
  validation: Record<string, number>;
  runId: string;
}

export interface RegisterVersionResult {
  version: number;
  created: boolean;
  stage: string;
  complete: boolean;
  missingMetrics: string[];
  decision: string;
  awaitingApproval: boolean;
}

export interface ResolveApprovalInput {
  model: string;
  version: number;
  /** `cancelled`: the job was cancelled while it waited; the version stays a candidate. */
  verdict: 'approved' | 'rejected' | 'timeout' | 'cancelled';
  by: string | null;
  note: string;
  /** registerVersion's decision ("eligible for promotion (approval required): …"), kept in the recorded reason. */
  eligibility?: string;
  timeoutMs?: number;
}

const ELIGIBLE_PREFIX = /^eligible for promotion \(approval required\):\s*/;

function formatMs(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function refuse(err: unknown): never {
  // An unreachable database is retried (the activity's retry policy); only refusals are final.
  if (err instanceof RegistryError && err.code !== 'UNAVAILABLE') throw ApplicationFailure.nonRetryable(err.message, ErrorType.RegistryRefused, { code: err.code });
  throw err;
}

export interface RegistryHooks {
  /** Test hook: throw after the registry write on these attempts (proves idempotency under retries). */
  failAfterRegisterOnAttempts?: number[];
  /** Limits failAfterRegisterOnAttempts to these models; default: every model. */
  failAfterRegisterModels?: string[];
}

export function createRegistryActivities(deps: CommonDeps, hooks: RegistryHooks = {}) {
  return {
    registerVersion: async (input: RegisterVersionInput): Promise<RegisterVersionResult> =>
      withOnPromote(deps, input.prepared.spec.model, await registerVersion(deps, hooks, input)),
    resolveApproval: async (a: ResolveApprovalInput): Promise<{ stage: string; decision: string }> => withOnPromote(deps, a.model, { version: a.version, ...(await resolveApproval(deps, a)) }),
  };
}

/**
 * A version that is production after the activity's write gets the model's onPromote hook, once per
 * production change (the registry records it): a retried activity finds the promotion done and the
 * hook recorded, and repeats neither. A failing hook fails the attempt (retried, logged).
 */
async function withOnPromote<R extends { version: number; stage: string; decision: string }>(deps: CommonDeps, model: string, r: R): Promise<R> {
  if (r.stage !== 'production') return r;
  try {
    const out = await runOnPromote(deps.config, await deps.registry(), model, r.version, deps.workerId, (fn) => fn(deps.client));
    return out.line ? { ...r, decision: `${r.decision}; ${out.line}` } : r;
  } catch (err) {
    const attempt = Context.current().info.attempt;
    deps.log.warn({ model, version: r.version, attempt }, `${(err as Error).message} (activity attempt ${attempt})`);
    throw err;
  }
}

async function registerVersion(deps: CommonDeps, hooks: RegistryHooks, { prepared: p, train, validation, runId }: RegisterVersionInput): Promise<RegisterVersionResult> {
  const reg = await deps.registry();
  const metrics = { ...train.metrics, ...validation };
  let created: boolean;
  let v: ModelVersion;
  try {
    ({ version: v, created } = await reg.register({
      model: p.spec.model,
      jobId: p.jobId,
      runId,
      trainer: p.spec.trainer,
      params: p.params,
      datasetFingerprint: p.datasetFingerprint,
      baseCheckpoint: p.spec.baseCheckpoint ?? null,
      metrics,
      // With storage.kind: s3 the stored model (every host can fetch it), else its path on the shared disk.
      artifactPath: train.modelUri ?? train.modelPath,
      artifacts: train.artifacts ?? [],
      checkpointPath: train.lastCheckpoint?.path ?? null,
      requiredMetrics: p.requiredMetrics,
    }));
  } catch (err) {
    refuse(err);
  }
  // The key is the workflow id, which a later run may reuse (resubmitted id, reset): that run
  // trained a different model, and must not be reported as the earlier run's version.
  if (!created && v.runId !== runId) {
    throw ApplicationFailure.nonRetryable(
      `job ${p.jobId} is already registered as ${v.model} v${v.version} by an earlier run (${v.runId}); this run (${runId}) cannot register under the same job id. Submit the retraining as a new job (a new --id)`,
      ErrorType.RegistryRefused,
      { code: 'JOB_CONFLICT', model: v.model, version: v.version },
    );
  }
  const attempt = Context.current().info.attempt;
  if (hooks.failAfterRegisterOnAttempts?.includes(attempt) && (!hooks.failAfterRegisterModels || hooks.failAfterRegisterModels.includes(p.spec.model))) {
    throw new Error(`injected fault: failing registerVersion after the write (attempt ${attempt})`);
  }
  // A retry after the decision was recorded returns that decision instead of deciding again.
  const prior = v.decisions.find((d) => d.kind === 'promoted' || d.kind === 'kept-candidate' || d.kind === 'rejected' || d.kind === 'approved');
  if (prior && !created) {
    return { version: v.version, created, stage: v.stage, complete: v.complete, missingMetrics: v.missingMetrics, decision: `${prior.reason}`, awaitingApproval: false };
  }
  if (!v.complete) {
    const reason = `not promotable: incomplete, missing required metrics ${v.missingMetrics.join(', ')}`;
    deps.log.warn({ jobId: p.jobId, model: v.model, version: v.version, missing: v.missingMetrics, metrics: Object.keys(metrics) }, `registered ${v.model} v${v.version} as INCOMPLETE: ${reason}`);
    await reg.recordDecision(v.model, v.version, { kind: 'kept-candidate', reason });
    return { version: v.version, created, stage: v.stage, complete: false, missingMetrics: v.missingMetrics, decision: reason, awaitingApproval: false };
  }
  return await decidePromotion(reg, p, v, created);
}

/** A complete, newly registered version: promote it, keep it, or leave it awaiting approval. */
async function decidePromotion(reg: ModelRegistry, p: PreparedJob, v: ModelVersion, created: boolean): Promise<RegisterVersionResult> {
  if (!p.promotion) {
    return { version: v.version, created, stage: v.stage, complete: true, missingMetrics: [], decision: 'kept candidate: no promotion policy for this model', awaitingApproval: false };
  }
  const prod = await reg.production(v.model);
  const verdict = evaluatePromotion(p.promotion, v, prod && prod.version !== v.version ? { version: prod.version, metrics: prod.metrics } : null);
  if (verdict.promote && !verdict.requiresApproval) {
    try {
      const after = await reg.promote(v.model, v.version, { reason: verdict.reason, by: 'kiln', kind: 'promoted' });
      return { version: v.version, created, stage: after.stage, complete: true, missingMetrics: [], decision: verdict.reason, awaitingApproval: false };
    } catch (err) {
      refuse(err);
    }
  }
  if (!verdict.promote) await reg.recordDecision(v.model, v.version, { kind: 'kept-candidate', reason: verdict.reason });
  return { version: v.version, created, stage: v.stage, complete: true, missingMetrics: [], decision: verdict.reason, awaitingApproval: verdict.requiresApproval };
}

async function resolveApproval(deps: CommonDeps, a: ResolveApprovalInput): Promise<{ stage: string; decision: string }> {
  const reg = await deps.registry();
  const why = a.eligibility ? a.eligibility.replace(ELIGIBLE_PREFIX, '') : '';
  const who = `${a.by ?? 'unknown'}${a.note ? ` (${a.note})` : ''}`;
  try {
    if (a.verdict === 'approved') {
      const reason = `approved by ${who}${why ? `: ${why}` : ''}`;
      const v = await reg.promote(a.model, a.version, { reason, by: a.by, kind: 'approved' });
      return { stage: v.stage, decision: `promoted: ${reason}` };
    }
    const reason =
      a.verdict === 'rejected'
        ? `rejected by ${who}: kept as candidate`
        : a.verdict === 'timeout'
          ? `approval timed out${a.timeoutMs !== undefined ? ` after ${formatMs(a.timeoutMs)}` : ''}: kept as candidate`
          : 'job cancelled while awaiting approval: kept as candidate';
    const full = why ? `${reason} (was eligible: ${why})` : reason;
    const v = await reg.recordDecision(a.model, a.version, { kind: a.verdict === 'rejected' ? 'rejected' : 'kept-candidate', reason: full, by: a.by });
    return { stage: v.stage, decision: full };
  } catch (err) {
    refuse(err);
  }
}
