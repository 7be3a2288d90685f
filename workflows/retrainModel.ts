/**
 * RetrainModel: started by a model's schedule (`kiln-retrain-<model>`), by `kiln train <model>` or by
 * a backfill. Checks whether the model needs training, and if so starts TrainingJob as a child under
 * a deterministic id from model + data fingerprint. That id is the dedupe: scheduled runs carry a
 * timestamp in their own id, so no two triggers share a RetrainModel id, but they all share the child
 * id, and the server refuses a second start of it.
 */
import {
  ApplicationFailure,
  ChildWorkflowCancellationType,
  ParentClosePolicy,
  proxyActivities,
  setCurrentDetails,
  log,
  patched,
  setDefaultSignalHandler,
  setHandler,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
  WorkflowIdReusePolicy,
} from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { ErrorType } from '../src/shared/errors';
import type { JobSummary } from '../src/shared/summary';
import { formatIssues } from '../src/shared/params';
import { RetrainInputSchema, retrainStateQuery, type RetrainPhase, type RetrainInput, type RetrainResult, type RetrainState } from '../src/shared/retrain';
import { kilnSearchAttributes } from '../src/shared/searchAttributes';
import { type ControlActivities, controlOptions, datasetOptions } from './activityOptions';
import type { TrainingJob } from './trainingJob';

const control = proxyActivities<ControlActivities>(controlOptions());

/** Set by the scheduler on the runs it starts: the nominal fire time. */
const TemporalScheduledStartTime = defineSearchAttributeKey('TemporalScheduledStartTime', SearchAttributeType.DATETIME);

export async function RetrainModel(raw: RetrainInput): Promise<RetrainResult> {
  const info = workflowInfo();
  const parsed = RetrainInputSchema.safeParse(raw);
  if (!parsed.success) {
    throw ApplicationFailure.nonRetryable(`invalid RetrainModel input:\n${formatIssues('input', parsed.error).join('\n')}`, ErrorType.InvalidJobSpec);
  }
  const input = parsed.data;
  const force = input.force ?? false;
  const state: RetrainState = { phase: 'checking', outcome: null, reason: null, fingerprint: null, childId: null };
  setHandler(retrainStateQuery, () => state);
  // RetrainModel takes no signals: anything sent is logged and dropped, never buffered or thrown.
  setDefaultSignalHandler((name) => log.warn(`${info.workflowId}: ignored signal "${name}": RetrainModel takes no signals`));
  // Whatever started this run (schedule, CLI, `temporal workflow start`), it is findable by model and trigger.
  // Runs that began before RetrainModel had a KilnPhase replay without it (the same commands as then).
  const phased = patched('kiln-retrain-phase');
  const setPhase = (phase: RetrainPhase) => {
    if (phased) upsertSearchAttributes(kilnSearchAttributes({ phase }));
  };
  upsertSearchAttributes(kilnSearchAttributes({ model: input.model, trigger: input.trigger, ...(phased ? { phase: 'checking' } : {}) }));
  setCurrentDetails(`checking whether ${input.model} needs training (${input.trigger}${force ? ', forced' : ''})`);

  const scheduledAt = info.typedSearchAttributes.get(TemporalScheduledStartTime) as Date | undefined;
  const check = await control.checkRetrainNeed.executeWithOptions(
    { ...datasetOptions(), summary: `need-check ${input.model}` },
    [{ ...input, scheduledAtMs: scheduledAt ? scheduledAt.getTime() : null, startedAtMs: info.startTime.getTime() }],
  );
  if (check.trigger !== input.trigger) upsertSearchAttributes(kilnSearchAttributes({ trigger: check.trigger }));
  state.fingerprint = check.fingerprint;

  const done = (outcome: RetrainResult['outcome'], reason: string, childId: string | null, training: JobSummary | null): RetrainResult => {
    Object.assign(state, { phase: 'done', outcome, reason, childId });
    setPhase(outcome);
    setCurrentDetails(`${outcome}: ${reason}${childId && outcome !== 'skipped' ? ` (${childId})` : ''}`);
    return { model: input.model, trigger: check.trigger, force, outcome, reason, fingerprint: check.fingerprint, dataset: check.dataset, childId, training };
  };

  if (!check.train) return done('skipped', check.reason, null, null);
  if (check.registered) {
    return done('deduped', `already trained this data version: v${check.registered.version} (${check.registered.stage}) from ${check.childId}; ${check.reason}`, check.childId, null);
  }

  let child;
  try {
    child = await startChild<typeof TrainingJob>('TrainingJob', {
      workflowId: check.childId,
      args: [check.spec],
      // A completed training of this data version is final; a failed or cancelled one may be retried
      // by the next trigger (it resumes from its checkpoints in the same work dir).
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
      // The training outlives its trigger: cancelling or terminating RetrainModel leaves it running.
      parentClosePolicy: ParentClosePolicy.ABANDON,
      cancellationType: ChildWorkflowCancellationType.ABANDON,
      typedSearchAttributes: kilnSearchAttributes({ model: input.model, phase: 'queued', trigger: check.trigger }),
      staticSummary: check.staticSummary,
      staticDetails: `Kiln training job for model **${input.model}**, data version \`${check.fingerprint}\` (${check.dataset.detail}), started by RetrainModel \`${info.workflowId}\` (${check.trigger}): ${check.reason}.`,
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      return done('deduped', `already trained/training this data version (${check.childId}); ${check.reason}`, check.childId, null);
    }
    throw err;
  }
  Object.assign(state, { phase: 'training', childId: check.childId, reason: check.reason });
  setPhase('training');
  setCurrentDetails(`training ${check.childId}: ${check.reason}`);
  let summary: JobSummary;
  try {
    summary = await child.result();
  } catch (err) {
    // Failing this run lets a schedule with pauseOnFailure pause itself.
    const msg = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
    Object.assign(state, { phase: 'done', outcome: 'trained', reason: `training failed: ${msg}` });
    setPhase('failed');
    setCurrentDetails(`failed: training ${check.childId} failed: ${msg.split('\n')[0]?.replace(/:$/, '')}`);
    throw ApplicationFailure.nonRetryable(`training ${check.childId} of ${input.model} failed: ${msg}`, ErrorType.TrainingFailed, { childId: check.childId });
  }
  const v = summary.registry.version ? ` → v${summary.registry.version} ${summary.registry.stage}` : '';
  return done('trained', `${check.reason}${v}`, check.childId, summary);
}
