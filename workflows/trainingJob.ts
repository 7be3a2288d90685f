/**
 * TrainingJob: one training job, end to end. The engine owns liveness: the `train` activity
 * heartbeats from the GPU worker, a dead worker is noticed by heartbeat timeout, and the retry resumes
 * from the checkpoint in the heartbeat details.
 *
 * queued → preparing → training ⇄ paused → evaluating → registering → [awaiting-approval] → completed
 * and failed / cancelled from anywhere.
 */
import {
  ActivityCancellationType,
  type ActivityOptions,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type * as activities from '../activities';
import { approveSignal, cancelSignal, gpuTaskQueue, pauseSignal, progressQuery, rejectSignal, reportSignal, resumeSignal, statusQuery, type ApprovalInput } from '../src/shared/messages';
import { type JobProgress } from '../src/shared/progress';
import { formatDuration } from '../src/shared/duration';
import { ErrorType, NON_RETRYABLE_TYPES } from '../src/shared/errors';
import { JobSpecSchema, type JobSpecInput, type PreparedJob } from '../src/shared/spec';
import { progressLine, type CheckpointRef, type Phase, type ProgressReport } from '../src/shared/progress';
import { type JobSummary, type TrainResult } from '../src/shared/summary';
import { formatIssues } from '../src/shared/params';
import { kilnSearchAttributes } from '../src/shared/searchAttributes';

type Activities = ReturnType<typeof activities.createControlActivities> & ReturnType<typeof activities.createGpuActivities>;

// No taskQueue: control activities run on the workflow's own queue (kiln-control in production,
// a unique queue per test).
const control = proxyActivities<Activities>({
  startToCloseTimeout: '2m',
  retry: { maximumAttempts: 10, initialInterval: '1s', maximumInterval: '20s', nonRetryableErrorTypes: NON_RETRYABLE_TYPES },
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
});

export async function TrainingJob(input: JobSpecInput): Promise<JobSummary> {
  const info = workflowInfo();
  const parsed = JobSpecSchema.safeParse(input);
  if (!parsed.success) {
    throw ApplicationFailure.nonRetryable(`invalid job spec:\n${formatIssues('spec', parsed.error).join('\n')}`, ErrorType.InvalidJobSpec);
  }
  const spec = parsed.data;
  const startedAt = new Date().toISOString();

  let phase: Phase = 'queued';
  let latest: ProgressReport | null = null;
  let cancelReason: string | null = null;
  let pauseRequested = false;
  let resumeRequested = false;
  let pausedAt: string | null = null;
  let approval: { approved: boolean; by: string; note: string } | null = null;
  let summary: JobSummary | null = null;
  let trainScope: CancellationScope | undefined;
  let attempts = 0;
  const workers = new Set<string>();
  const resumedFromSteps: number[] = [];
  let lastCheckpoint: CheckpointRef | null = null;
  let checkpoints: CheckpointRef[] = [];
  let validation: Record<string, number> = {};

  // Read through a function: signal handlers assign it, which TypeScript's narrowing cannot see.
  const currentCheckpoint = (): CheckpointRef | null => lastCheckpoint;
  const line = (): string => {
    if (summary) {
      const r = summary.registry;
      const incomplete = r.complete === false ? ` INCOMPLETE (missing ${r.missing_metrics.join(', ')}), not promotable` : '';
      return `${summary.outcome}${r.version ? ` · v${r.version} ${r.stage}${incomplete}` : ''}`;
    }
    if (phase === 'paused') return `paused at step ${lastCheckpoint?.step ?? latest?.step ?? 0} (resume with the resume signal)`;
    if (latest && phase === 'training') return progressLine(latest, formatDuration);
    return phase;
  };
  const setPhase = (p: Phase): void => {
    phase = p;
    upsertSearchAttributes(kilnSearchAttributes({ phase: p }));
    setCurrentDetails(line());
  };

  const progress = (): JobProgress => ({
    jobId: info.workflowId,
    model: spec.model,
    phase,
    attempt: latest?.attempt ?? attempts,
    workerId: latest?.workerId ?? null,
    step: latest?.step ?? 0,
    totalSteps: latest?.totalSteps ?? null,
    epoch: latest?.epoch ?? null,
    totalEpochs: latest?.totalEpochs ?? null,
    metrics: latest?.metrics ?? {},
    validation,
    etaMs: latest?.etaMs ?? null,
    stepsPerSec: latest?.stepsPerSec ?? null,
    lastCheckpoint,
    checkpoints: checkpoints.length,
    checkpointBytes: latest?.checkpointBytes ?? 0,
    gpuIds: latest?.gpuIds ?? [],
    gpu: latest?.gpu ?? null,
    malformedEvents: latest?.malformedEvents ?? 0,
    lastProgressAt: latest?.lastProgressAt ?? null,
    pausedAt,
    cancelReason,
    line: line(),
    summary,
  });

  setHandler(progressQuery, progress);
  setHandler(statusQuery, () => ({
    jobId: info.workflowId,
    model: spec.model,
    phase,
    step: latest?.step ?? 0,
    totalSteps: latest?.totalSteps ?? null,
    loss: typeof latest?.metrics.loss === 'number' ? latest.metrics.loss : null,
    line: line(),
  }));
  setHandler(reportSignal, (r) => {
    // Reports from an attempt the workflow no longer waits for (a late signal) must not move progress back.
    if (latest && r.attempt < latest.attempt) return;
    latest = r;
    workers.add(r.workerId);
    if (r.lastCheckpoint) lastCheckpoint = r.lastCheckpoint;
    checkpoints = r.checkpoints;
    if (Object.keys(r.validation).length) validation = { ...validation, ...r.validation };
    if (phase === 'training') setCurrentDetails(line());
  });
  setHandler(cancelSignal, async (arg) => {
    if (summary || cancelReason !== null) return;
    cancelReason = arg?.reason?.trim() || 'cancelled by signal';
    // Turn the signal into a real cancellation request, so both paths end the same way: the run
    // closes as Canceled in the UI and visibility, after the trainer is really gone. The server
    // refuses a workflow's request to cancel itself, so a control activity asks as a client.
    await control.requestCancellation({ workflowId: info.workflowId, runId: info.runId, reason: cancelReason });
  });
  setHandler(pauseSignal, () => {
    if (phase !== 'training' || !trainScope) return;
    pauseRequested = true;
    trainScope.cancel();
  });
  setHandler(resumeSignal, () => {
    resumeRequested = true;
  });
  setHandler(approveSignal, (a?: ApprovalInput) => {
    approval ??= { approved: true, by: a?.by ?? 'unknown', note: a?.note ?? '' };
  });
  setHandler(rejectSignal, (a?: ApprovalInput) => {
    approval ??= { approved: false, by: a?.by ?? 'unknown', note: a?.note ?? '' };
  });

  const buildSummary = (outcome: JobSummary['outcome'], train: TrainResult | null, reg: JobSummary['registry'] | null, failure: string | null): JobSummary => ({
    jobId: info.workflowId,
    model: spec.model,
    outcome,
    training_metrics: {
      final_loss: train?.finalLoss ?? (typeof latest?.metrics.loss === 'number' ? latest.metrics.loss : null),
      epochs: train?.epochs ?? latest?.epoch ?? null,
      steps: train?.steps ?? latest?.step ?? 0,
      duration_ms: Date.now() - Date.parse(startedAt),
    },
    validation_metrics: validation,
    resource_usage: { gpu_ids: train?.gpuIds ?? latest?.gpuIds ?? [], gpu: train?.gpu ?? latest?.gpu ?? null },
    artifacts: { model_path: train?.modelPath ?? null, checkpoints: train?.checkpoints ?? checkpoints, last_checkpoint: train?.lastCheckpoint ?? lastCheckpoint },
    registry: reg ?? { version: null, stage: null, complete: null, missing_metrics: [], decision: null },
    session_info: {
      attempts,
      workers: [...workers],
      started_at: startedAt,
      ended_at: new Date().toISOString(),
      cancellation_reason: cancelReason,
      failure,
      resumed_from_steps: resumedFromSteps,
      resume: train?.resumedFrom ? { from_step: train.resumedFrom.step, first_step: train.firstStep } : null,
    },
  });
  const finish = (s: JobSummary): void => {
    summary = s;
    upsertMemo({ summary: s });
    setPhase(s.outcome);
  };

  let prepared: PreparedJob | null = null;
  // Set once a version exists, so a job cancelled while awaiting approval still reports it.
  let registered: JobSummary['registry'] | null = null;
  try {
    setPhase('preparing');
    prepared = await control.prepareJob(spec, info.workflowId);
    const p = prepared;

    // No scheduleToStart limit: a job may wait for a free GPU slot as long as it has to.
    // WAIT_CANCELLATION_COMPLETED: "cancelled" must mean the trainer process is really gone.
    const gpu = proxyActivities<Activities>(trainOptions(p));

    // Training, with pause/resume: a pause cancels the attempt (the trainer checkpoints on SIGTERM and
    // the slot is freed), and a resume starts a new activity from that checkpoint.
    setPhase('training');
    let train: TrainResult;
    let resumeFrom: CheckpointRef | null = null;
    for (;;) {
      trainScope = new CancellationScope();
      attempts += 1;
      const scope = trainScope;
      try {
        train = await scope.run(() =>
          gpu.train.executeWithOptions({ ...trainOptions(p), summary: `train ${spec.model} (${spec.trainer})${resumeFrom ? ` from step ${resumeFrom.step}` : ''}` }, [
            { prepared: p, resumeFrom, runId: info.runId },
          ]),
        );
        attempts += train.attempt - 1;
        workers.add(train.workerId);
        if (train.resumedFrom) resumedFromSteps.push(train.resumedFrom.step);
        break;
      } catch (err) {
        if (pauseRequested && isCancellation(err) && !CancellationScope.current().consideredCancelled) {
          pauseRequested = false;
          resumeRequested = false;
          pausedAt = new Date().toISOString();
          resumeFrom = currentCheckpoint();
          if (resumeFrom) resumedFromSteps.push(resumeFrom.step);
          setPhase('paused');
          await condition(() => resumeRequested);
          pausedAt = null;
          setPhase('training');
          continue;
        }
        throw err;
      }
    }
    trainScope = undefined;
    if (train.lastCheckpoint) lastCheckpoint = train.lastCheckpoint;
    validation = { ...validation, ...train.validation };

    setPhase('evaluating');
    const evalResult = await (p.evaluate.queue === 'gpu' ? gpu : control).evaluate.executeWithOptions(
      { ...evaluateOptions(p, p.evaluate.queue === 'gpu' ? gpuTaskQueue(spec.pool) : info.taskQueue), summary: `evaluate ${spec.model}` },
      [{ prepared: p, train }],
    );
    validation = { ...validation, ...evalResult.metrics };

    setPhase('registering');
    const reg = await control.registerVersion.executeWithOptions({ ...controlOptions(), summary: `register ${spec.model}` }, [
      { prepared: p, train, validation, runId: info.runId },
    ]);
    registered = { version: reg.version, stage: reg.stage, complete: reg.complete, missing_metrics: reg.missingMetrics, decision: reg.decision };
    if (reg.awaitingApproval && p.promotion) {
      setPhase('awaiting-approval');
      setCurrentDetails(`awaiting approval of ${spec.model} v${reg.version}: ${reg.decision} (signal approve or reject)`);
      const timeoutMs = p.promotion.approvalTimeoutMs;
      let decided: boolean;
      try {
        decided = await condition(() => approval !== null, timeoutMs);
      } catch (err) {
        // A cancelled wait is a decision too: record it on the version before the job ends.
        if (isCancellation(err)) {
          await CancellationScope.nonCancellable(async () => {
            const outcome = await control
              .resolveApproval({ model: spec.model, version: reg.version, verdict: 'cancelled', by: null, note: cancelReason ?? '', eligibility: reg.decision })
              .catch(() => null);
            if (outcome && registered) registered = { ...registered, stage: outcome.stage, decision: outcome.decision };
          });
        }
        throw err;
      }
      const a = approval as { approved: boolean; by: string; note: string } | null;
      const outcome = await control.resolveApproval({
        model: spec.model,
        version: reg.version,
        verdict: !decided || !a ? 'timeout' : a.approved ? 'approved' : 'rejected',
        by: a?.by ?? null,
        note: a?.note ?? '',
        eligibility: reg.decision,
        timeoutMs,
      });
      registered = { ...registered, stage: outcome.stage, decision: outcome.decision };
    }
    const s = buildSummary('completed', train, registered, null);
    finish(s);
    return s;
  } catch (err) {
    if (isCancellation(err)) {
      cancelReason ??= 'cancelled (temporal workflow cancel)';
      await CancellationScope.nonCancellable(async () => {
        finish(buildSummary('cancelled', null, registered, null));
        if (prepared) await control.recordJobEnd({ prepared, outcome: 'cancelled', reason: cancelReason ?? '' }).catch(() => undefined);
      });
      throw err;
    }
    const message = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
    finish(buildSummary('failed', null, null, message));
    if (err instanceof ApplicationFailure) throw err;
    throw ApplicationFailure.nonRetryable(`training job failed: ${message}`, ErrorType.TrainingFailed, summary);
  }
}

function trainOptions(p: PreparedJob): ActivityOptions {
  return {
    taskQueue: gpuTaskQueue(p.spec.pool),
    startToCloseTimeout: p.timeouts.startToCloseMs,
    heartbeatTimeout: p.timeouts.heartbeatMs,
    retry: {
      maximumAttempts: p.timeouts.maxAttempts,
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '30s',
      nonRetryableErrorTypes: NON_RETRYABLE_TYPES,
    },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}

function evaluateOptions(p: PreparedJob, taskQueue: string): ActivityOptions {
  return {
    taskQueue,
    startToCloseTimeout: p.evaluate.timeoutMs,
    heartbeatTimeout: p.timeouts.heartbeatMs,
    retry: { maximumAttempts: 3, initialInterval: '1s', nonRetryableErrorTypes: NON_RETRYABLE_TYPES },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}

function controlOptions(): ActivityOptions {
  return {
    // Registry writes take milliseconds: a control worker that died mid-call is retried after 30 s.
    startToCloseTimeout: '30s',
    retry: { maximumAttempts: 10, initialInterval: '1s', maximumInterval: '20s', nonRetryableErrorTypes: NON_RETRYABLE_TYPES },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}
