/**
 * Registry activities (control queue): register the trained version (idempotent by job id, so a
 * retried activity never creates a second version), decide promotion, and settle approvals.
 */
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { ErrorType } from '../src/errors';
import type { PreparedJob, TrainResult } from '../src/job';
import { evaluatePromotion } from '../src/registry/promotion';
import { RegistryError } from '../src/registry/types';
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
  verdict: 'approved' | 'rejected' | 'timeout';
  by: string | null;
  note: string;
}

function refuse(err: unknown): never {
  if (err instanceof RegistryError) throw ApplicationFailure.nonRetryable(err.message, ErrorType.RegistryRefused, { code: err.code });
  throw err;
}

export interface RegistryHooks {
  /** Test hook: throw after the registry write on these attempts (proves idempotency under retries). */
  failAfterRegisterOnAttempts?: number[];
}

export function createRegistryActivities(deps: CommonDeps, hooks: RegistryHooks = {}) {
  return {
    async registerVersion({ prepared: p, train, validation, runId }: RegisterVersionInput): Promise<RegisterVersionResult> {
      const reg = deps.registry();
      const metrics = { ...train.metrics, ...validation };
      let created: boolean;
      let v;
      try {
        ({ version: v, created } = reg.register({
          model: p.spec.model,
          jobId: p.jobId,
          runId,
          trainer: p.spec.trainer,
          params: p.params,
          datasetFingerprint: p.datasetFingerprint,
          baseCheckpoint: p.spec.baseCheckpoint ?? null,
          metrics,
          artifactPath: train.modelPath,
          checkpointPath: train.lastCheckpoint?.path ?? null,
          requiredMetrics: p.requiredMetrics,
        }));
      } catch (err) {
        refuse(err);
      }
      const attempt = Context.current().info.attempt;
      if (hooks.failAfterRegisterOnAttempts?.includes(attempt)) {
        throw new Error(`injected fault: failing registerVersion after the write (attempt ${attempt})`);
      }
      // A retry after the decision was recorded returns that decision instead of deciding again.
      const prior = v.decisions.find((d) => d.kind === 'promoted' || d.kind === 'kept-candidate' || d.kind === 'rejected' || d.kind === 'approved');
      if (prior && !created) {
        return { version: v.version, created, stage: v.stage, complete: v.complete, missingMetrics: v.missingMetrics, decision: `${prior.reason}`, awaitingApproval: false };
      }
      if (!v.complete) {
        const reason = `not promotable: incomplete, missing required metrics ${v.missingMetrics.join(', ')}`;
        reg.recordDecision(v.model, v.version, { kind: 'kept-candidate', reason });
        return { version: v.version, created, stage: v.stage, complete: false, missingMetrics: v.missingMetrics, decision: reason, awaitingApproval: false };
      }
      if (!p.promotion) {
        return { version: v.version, created, stage: v.stage, complete: true, missingMetrics: [], decision: 'kept candidate: no promotion policy for this model', awaitingApproval: false };
      }
      const prod = reg.production(v.model);
      const verdict = evaluatePromotion(p.promotion, v, prod && prod.version !== v.version ? { version: prod.version, metrics: prod.metrics } : null);
      if (verdict.promote && !verdict.requiresApproval) {
        try {
          const after = reg.promote(v.model, v.version, { reason: verdict.reason, by: 'kiln', kind: 'promoted' });
          return { version: v.version, created, stage: after.stage, complete: true, missingMetrics: [], decision: verdict.reason, awaitingApproval: false };
        } catch (err) {
          refuse(err);
        }
      }
      if (!verdict.promote) reg.recordDecision(v.model, v.version, { kind: 'kept-candidate', reason: verdict.reason });
      return { version: v.version, created, stage: v.stage, complete: true, missingMetrics: [], decision: verdict.reason, awaitingApproval: verdict.requiresApproval };
    },

    async resolveApproval(a: ResolveApprovalInput): Promise<{ stage: string; decision: string }> {
      const reg = deps.registry();
      try {
        if (a.verdict === 'approved') {
          const reason = `approved by ${a.by ?? 'unknown'}${a.note ? `: ${a.note}` : ''}`;
          const v = reg.promote(a.model, a.version, { reason, by: a.by, kind: 'approved' });
          return { stage: v.stage, decision: `promoted: ${reason}` };
        }
        const reason = a.verdict === 'rejected' ? `rejected by ${a.by ?? 'unknown'}${a.note ? `: ${a.note}` : ''}` : 'approval timed out: kept as candidate';
        const v = reg.recordDecision(a.model, a.version, { kind: a.verdict === 'rejected' ? 'rejected' : 'kept-candidate', reason, by: a.by });
        return { stage: v.stage, decision: reason };
      } catch (err) {
        refuse(err);
      }
    },

    /** Cancels a workflow as a client would (`temporal workflow cancel`); used by the cancel signal. */
    async requestCancellation(r: { workflowId: string; runId: string; reason: string }): Promise<void> {
      deps.log.info({ jobId: r.workflowId, reason: r.reason }, 'cancel signal: requesting cancellation');
      await deps.client.workflow.getHandle(r.workflowId, r.runId).cancel();
    },

    async recordJobEnd(e: { prepared: PreparedJob; outcome: string; reason: string }): Promise<void> {
      deps.log.info({ jobId: e.prepared.jobId, model: e.prepared.spec.model, outcome: e.outcome, reason: e.reason }, 'job ended');
    },
  };
}
