/**
 * TrainingJob: one training job, end to end. The engine owns liveness: the `train` activity
 * heartbeats from the GPU worker, a dead worker is noticed by heartbeat timeout, and the retry resumes
 * from the checkpoint in the heartbeat details.
 *
 * queued → preparing → training ⇄ paused → evaluating → registering → [awaiting-approval] → completed
 * and failed / cancelled from anywhere.
 *
 * The job's state and handlers live in jobState.ts, the approval wait in approval.ts, activity options
 * in activityOptions.ts.
 */
import {
  ActivityFailure,
  type ActivityInterfaceFor,
  ApplicationFailure,
  CancellationScope,
  condition,
  ContinueAsNew,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  TimeoutFailure,
  uuid4,
  workflowInfo,
  type WorkflowInfo,
} from '@temporalio/workflow';
import { gpuTaskQueue, retryStateQuery } from '../src/shared/messages';
import { ErrorType } from '../src/shared/errors';
import { JobSpecSchema, type JobSpec, type JobSpecInput, type PreparedJob } from '../src/shared/spec';
import type { CheckpointRef } from '../src/shared/progress';
import { type JobSummary, type TrainResult } from '../src/shared/summary';
import { formatIssues } from '../src/shared/params';
import { type Activities, controlOptions, datasetOptions, evaluateOptions, trainOptions } from './activityOptions';
import { awaitApproval } from './approval';
import { AttemptBudget, classify } from './attempts';
import { type Carried, continueJob, historyDue, parseCarried, restoreJob, watchHistory } from './continueAsNew';
import { JobState } from './jobState';
import { buildSummary } from './jobSummary';
import { enterQueue, QUEUED_PHASE_PATCH } from './queue';
import { applyRetry, retryState } from './retry';
import { noteFailure } from './suspects';

type Proxy = ActivityInterfaceFor<Activities>;

const control = proxyActivities<Activities>(controlOptions());

/** `carried` is only ever passed by the job itself when it continues as new (continueAsNew.ts). */
export async function TrainingJob(input: JobSpecInput, carried?: Carried): Promise<JobSummary> {
  const info = workflowInfo();
  const parsed = JobSpecSchema.safeParse(input);
  if (!parsed.success) {
    throw ApplicationFailure.nonRetryable(`invalid job spec:\n${formatIssues('spec', parsed.error).join('\n')}`, ErrorType.InvalidJobSpec);
  }
  const spec = parsed.data;
  const job = new JobState(info.workflowId, info.runId, spec.model);
  const resumed = carried === undefined ? null : parseCarried(carried);
  if (resumed) restoreJob(job, resumed.job);
  if (resumed?.retry) {
    // `kiln retry`: budgets start over; the first attempt resumes from the checkpoint it names.
    resumed.budget = {};
    resumed.pauseCheckpoint = applyRetry(job, resumed.retry);
  }
  job.listen(control);

  let prepared: PreparedJob | null = resumed?.prepared ?? null;
  setHandler(retryStateQuery, () => retryState(job, spec, prepared, (resumed?.runs ?? 0) + 1));
  try {
    if (!prepared) {
      job.setPhase('preparing');
      prepared = await control.prepareJob.executeWithOptions({ ...datasetOptions(), summary: `prepare ${spec.model}` }, [spec, info.workflowId]);
    }
    job.workDir = prepared.workDir;
    return job.finish(await trainEvaluateRegister(job, spec, prepared, info, resumed));
  } catch (err) {
    // Continuing as new is how a long job goes on, not how it ends.
    if (err instanceof ContinueAsNew) throw err;
    return await failJob(job, prepared, err);
  }
}

async function trainEvaluateRegister(job: JobState, spec: JobSpec, p: PreparedJob, info: WorkflowInfo, resumed: Carried | null): Promise<JobSummary> {
  const gpu = proxyActivities<Activities>(trainOptions(p));
  // Runs that began before the queued phase existed replay without it (the same commands as then).
  job.queuedPhase = patched(QUEUED_PHASE_PATCH);
  if (!job.queuedPhase) job.setPhase('training');
  const train = await trainUntilDone(job, gpu, spec, p, resumed);
  if (train.lastCheckpoint) job.lastCheckpoint = train.lastCheckpoint;
  job.validation = { ...job.validation, ...train.validation };

  job.setPhase('evaluating');
  const evalResult = await (p.evaluate.queue === 'gpu' ? gpu : control).evaluate.executeWithOptions(
    { ...evaluateOptions(p, p.evaluate.queue === 'gpu' ? gpuTaskQueue(spec.pool) : info.taskQueue), summary: `evaluate ${spec.model}` },
    [{ prepared: p, train }],
  );
  job.validation = { ...job.validation, ...evalResult.metrics };

  job.setPhase('registering');
  const reg = await control.registerVersion.executeWithOptions({ ...controlOptions(), summary: `register ${spec.model}` }, [
    { prepared: p, train, validation: job.validation, runId: job.runId },
  ]);
  job.registered = { version: reg.version, stage: reg.stage, complete: reg.complete, missing_metrics: reg.missingMetrics, decision: reg.decision };
  if (reg.awaitingApproval && p.promotion) await awaitApproval(job, control, reg, p.promotion.approvalTimeoutMs);
  return buildSummary(job, 'completed', train, job.registered, null);
}

/**
 * Training: one `train` activity per attempt, until one completes. Pause/resume is desired state: a
 * pause cancels the running attempt (the trainer checkpoints on SIGTERM and the slot is freed); while
 * the job is paused it waits; once it is not, a new attempt starts from the newest checkpoint.
 * Whatever the interleaving of pause and resume, the job ends up in the state of the last accepted
 * one. What a failed attempt costs is decided here (attempts.ts), not by an activity retry policy.
 * Before its history gets long the job continues as new between attempts (continueAsNew.ts): a
 * running attempt is stopped like a pause, and the next run resumes from the checkpoint it saved.
 */
async function trainUntilDone(job: JobState, gpu: Proxy, spec: JobSpec, p: PreparedJob, resumed: Carried | null): Promise<TrainResult> {
  const budget = resumed ? AttemptBudget.restore(p.timeouts, resumed.budget) : new AttemptBudget(p.timeouts);
  // The checkpoint a pause (or a stop for continue-as-new) saved: handed to every later attempt
  // (which keeps it pinned). Otherwise an attempt resumes from the newest checkpoint in the manifest.
  let pauseCheckpoint: CheckpointRef | null = resumed?.pauseCheckpoint ?? null;
  for (;;) {
    if (job.paused) await waitWhilePaused(job, p);
    const due = historyDue(p);
    if (due) await continueJob(job, spec, { runs: resumed?.runs ?? 0, prepared: p, budget, pauseCheckpoint }, due);
    const scope = new CancellationScope();
    job.trainScope = scope;
    const history = watchHistory(p, scope);
    const rec = job.beginAttempt();
    // A new token per attempt: reports from an earlier (paused, superseded) one are dropped.
    const token = uuid4();
    job.reportToken = token;
    // Queued until the attempt's first report: it may wait for a worker or a free slot.
    if (job.queuedPhase) enterQueue(job, control, spec.pool, token);
    const from = pauseCheckpoint;
    try {
      const train = await scope.run(() =>
        gpu.train.executeWithOptions({ ...trainOptions(p), summary: `train ${spec.model} (${spec.trainer}) attempt ${rec.n}${rec.resume_step ? ` from step ${rec.resume_step}` : ''}` }, [
          { prepared: p, resumeFrom: from, runId: job.runId, reportToken: token, attempt: rec.n, recorded: job.recorded(), skip: job.suspects.skipList(), maxResumeStep: job.suspects.maxResumeStep(job.lastCheckpoint?.step ?? 0) },
        ]),
      );
      history.stop();
      job.workers.add(train.workerId);
      if (train.resumedFrom) job.resumedFromSteps.push(train.resumedFrom.step);
      job.endAttempt(rec, 'completed', null, train.steps);
      job.trainScope = undefined;
      return train;
    } catch (err) {
      job.trainScope = undefined;
      history.stop();
      const pausedThis = job.pauseScope === scope;
      job.pauseScope = undefined;
      // Only a cancellation this workflow asked for is one: a worker drained under the attempt also
      // ends it with a cancellation, and that is an interruption.
      if (CancellationScope.current().consideredCancelled) {
        job.endAttempt(rec, 'cancelled', 'job cancelled');
        throw err;
      }
      if ((pausedThis || history.fired) && scope.consideredCancelled && isCancellation(err)) {
        job.endAttempt(rec, pausedThis ? 'paused' : 'continued', pausedThis ? 'paused' : `stopped to continue as new: ${history.fired}`);
        pauseCheckpoint = job.lastCheckpoint;
        if (pauseCheckpoint) job.resumedFromSteps.push(pauseCheckpoint.step);
        continue;
      }
      const c = classify(err);
      if (err instanceof ActivityFailure && err.cause instanceof TimeoutFailure) job.learnFromHeartbeat(rec, err.cause.lastHeartbeatDetails);
      job.endAttempt(rec, c.kind === 'interruption' ? 'interrupted' : 'failed', c.cause);
      if (c.kind === 'fatal') throw err;
      const suspect = noteFailure(job.suspects, rec.n, c.kind, err, c.cause);
      if (suspect) log.warn(`${job.jobId}: attempt ${rec.n} failed right after resuming from checkpoint step ${suspect.step} (${suspect.path}); ${suspect.quarantined ? 'quarantined: no attempt resumes from it again' : 'suspect: the next attempt resumes from the previous one'}`);
      const progressed = (job.lastCheckpoint?.step ?? 0) > rec.resume_step;
      const delay = budget.charge(c.kind, progressed, c.message, Date.now());
      job.interruptions = budget.interruptions;
      if (job.queuedPhase) job.setPhase('queued', `queued: retry ${rec.n + 1} after ${c.cause.replace(/:$/, '')}, in ${Math.round(delay / 1000)}s`);
      else job.setPhase('training', `retrying in ${Math.round(delay / 1000)} s after attempt ${rec.n}: ${c.cause}`);
      await sleep(delay);
    }
  }
}

/** Waits while the job is paused; a paused job whose history is due continues as new while it waits. */
async function waitWhilePaused(job: JobState, p: PreparedJob): Promise<void> {
  job.pausedAt ??= new Date().toISOString();
  job.setPhase('paused');
  await condition(() => !job.paused || historyDue(p) !== null);
  if (job.paused) return;
  job.pausedAt = null;
  if (!job.queuedPhase) job.setPhase('training');
}

/** Ends the job as cancelled (a cancellation, rethrown) or failed (non-retryable), with its summary. */
async function failJob(job: JobState, prepared: PreparedJob | null, err: unknown): Promise<never> {
  if (isCancellation(err)) {
    job.cancelledBy ??= job.cancelReason ? null : 'temporal workflow cancel';
    job.cancelReason ??= 'cancelled (temporal workflow cancel)';
    await CancellationScope.nonCancellable(async () => {
      job.workDir ??= prepared?.workDir ?? null;
      job.finish(buildSummary(job, 'cancelled', null, job.registered, null));
      if (prepared) await control.recordJobEnd({ prepared, outcome: 'cancelled', reason: job.cancelReason ?? '' }).catch(() => undefined);
    });
    throw err;
  }
  const message = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
  job.workDir ??= prepared?.workDir ?? null;
  job.finish(buildSummary(job, 'failed', null, null, message));
  if (err instanceof ApplicationFailure) throw err;
  throw ApplicationFailure.nonRetryable(`training job failed: ${message}`, ErrorType.TrainingFailed, job.summary);
}
