/**
 * The job summary a TrainingJob ends with (its result, and its memo `summary`), built from the job's
 * state. finish() in jobState.ts stores it in the readable form (src/shared/summary.ts
 * readableSummary: rounded numbers, paths relative to the job's folder). Not a workflow:
 * workflows/index.ts does not export it.
 */
import type { JobSummary, TrainResult } from '../src/shared/summary';
import type { JobState, Registered } from './jobState';

export function buildSummary(job: JobState, outcome: JobSummary['outcome'], train: TrainResult | null, reg: Registered | null, failure: string | null): JobSummary {
  const latest = job.latest;
  return {
    jobId: job.jobId,
    model: job.model,
    outcome,
    training_metrics: {
      final_loss: train?.finalLoss ?? (typeof latest?.metrics.loss === 'number' ? latest.metrics.loss : null),
      epochs: train?.epochs ?? latest?.epoch ?? null,
      steps: train?.steps ?? latest?.step ?? 0,
      duration_ms: Date.now() - Date.parse(job.startedAt),
    },
    validation_metrics: job.validation,
    resource_usage: { gpu_ids: train?.gpuIds ?? latest?.gpuIds ?? [], gpu: train?.gpu ?? latest?.gpu ?? null },
    artifacts: {
      model_path: train?.modelPath ?? null,
      ...(train?.modelUri ? { model_uri: train.modelUri } : {}),
      checkpoints: train?.checkpoints ?? job.checkpoints,
      last_checkpoint: train?.lastCheckpoint ?? job.lastCheckpoint,
    },
    registry: reg ?? { version: null, stage: null, complete: null, missing_metrics: [], decision: null },
    session_info: {
      attempts: job.attempts,
      interruptions: job.interruptions,
      attempt_log: job.attemptLog,
      ...(job.olderAttempts ? { older_attempts: job.olderAttempts } : {}),
      ...(job.retries.length ? { retries: job.retries } : {}),
      workers: [...job.workers],
      started_at: job.startedAt,
      ended_at: new Date().toISOString(),
      cancellation_reason: job.cancelReason,
      failure,
      resumed_from_steps: job.resumedFromSteps,
      resume: train?.resumedFrom ? { from_step: train.resumedFrom.step, first_step: train.firstStep } : null,
      ...(job.suspects.list.length ? { suspect_checkpoints: job.suspects.list.map((s) => ({ step: s.step, path: s.path, failed_attempts: s.failedAttempts, quarantined: s.quarantined, cause: s.cause })) } : {}),
      ...(job.skippedCheckpoints.length ? { skipped_checkpoints: job.skippedCheckpoints.map((k) => ({ attempt: k.attempt, step: k.step, path: k.path, problem: k.problem })) } : {}),
      ...(job.restartedFromScratch ? { restarted_from_scratch: { attempt: job.restartedFromScratch.attempt, steps_lost: job.restartedFromScratch.stepsLost, reason: job.restartedFromScratch.reason } } : {}),
    },
  };
}
