/**
 * Continue-as-new for long TrainingJobs: each run's history stays below `workers.historyEvents`
 * (default 10,000) and below whatever the server suggests (`continueAsNewSuggested`), far from
 * Temporal's hard limit (51,200 events, when the server terminates the workflow).
 *
 * The rollover happens only between train attempts: an activity belongs to the run that scheduled it,
 * so a running attempt is first stopped the way a pause stops it (cancelled: the trainer checkpoints
 * on SIGTERM, the attempt's final report carries that checkpoint, the activity ends), then the
 * handlers are drained (`allHandlersFinished`) and the job continues as new under the same workflow
 * id, carrying its whole state (below). The next run's first attempt resumes from the checkpoint the
 * stop saved, so a contract-following trainer loses 0 steps; one that does not checkpoint on SIGTERM
 * loses what it lost on a pause (the steps since its last checkpoint). A paused job rolls over while
 * it waits, and stays paused. Later phases (evaluate, register, approval) add a few dozen events and
 * do not roll over.
 *
 * Report tokens are per attempt and an attempt never spans runs: the old attempt's reports are sent
 * to its own (closed) run and dropped there, and the new run issues a new token to its first attempt.
 * Not a workflow: workflows/index.ts does not export it.
 */
import { allHandlersFinished, ApplicationFailure, type CancellationScope, condition, log, makeContinueAsNewFunc, setCurrentDetails, workflowInfo } from '@temporalio/workflow';
import { ErrorType } from '../src/shared/errors';
import { retryRequestProblem } from '../src/shared/retry';
import type { CheckpointRef } from '../src/shared/progress';
import type { JobSpec, PreparedJob } from '../src/shared/spec';
import type { RetryRequest } from '../src/shared/retry';
import type { AttemptRecord, JobSummary, OlderAttempts } from '../src/shared/summary';
import type { AttemptBudget, BudgetSnapshot } from './attempts';
import type { JobState } from './jobState';
import { CheckpointSuspects } from './suspects';

export const DEFAULT_HISTORY_EVENTS = 10_000;
/** A run continues as new on the server's suggestion only after this many events of its own. */
const MIN_RUN_EVENTS = 50;
/** Attempts whose full record a run carries; older ones are carried as counts (OlderAttempts). */
export const CARRIED_ATTEMPTS = 100;

/** What a JobState carries into the next run. */
export type JobSnapshot = Pick<
  JobState,
  | 'latest'
  | 'cancelReason'
  | 'cancelledBy'
  | 'paused'
  | 'controlSeq'
  | 'ignoredMessages'
  | 'lastIgnored'
  | 'pausedAt'
  | 'approval'
  | 'attempts'
  | 'interruptions'
  | 'attemptLog'
  | 'resumedFromSteps'
  | 'lastCheckpoint'
  | 'checkpoints'
  | 'validation'
  | 'registered'
  | 'startedAt'
  | 'retries'
  | 'olderAttempts'
> & { workers: string[]; skippedCheckpoints?: JobState['skippedCheckpoints']; suspects?: ReturnType<CheckpointSuspects['snapshot']> };

/** The second argument of a continued TrainingJob run. */
export interface Carried {
  kind: 'kiln.continued';
  /** Runs of this job before this one. */
  runs: number;
  prepared: PreparedJob;
  job: JobSnapshot;
  /** Empty for a retried run: its budgets start over. */
  budget: Partial<BudgetSnapshot>;
  /** The checkpoint the stop (or a pause) saved; the next attempt resumes from it. */
  pauseCheckpoint: CheckpointRef | null;
  /** Set by `kiln retry` (src/client/retry.ts): this run continues a job whose run ended; workflows/retry.ts. */
  retry?: RetryRequest;
}

/**
 * The attempt log a run carries: the newest `keep` records in full, and every older one folded into
 * counts (attempts, by outcome, steps lost), so the summary's totals stay exact however long the job.
 */
export function capAttemptLog(log: readonly AttemptRecord[], older: OlderAttempts | null, keep = CARRIED_ATTEMPTS): { attemptLog: AttemptRecord[]; olderAttempts: OlderAttempts | null } {
  if (log.length <= keep) return { attemptLog: [...log], olderAttempts: older };
  const folded: OlderAttempts = older ? { ...older, by_outcome: { ...older.by_outcome } } : { attempts: 0, first: log[0]!.n, last: 0, by_outcome: {}, steps_lost: 0 };
  for (const a of log.slice(0, log.length - keep)) {
    folded.attempts += 1;
    folded.first = Math.min(folded.first, a.n);
    folded.last = Math.max(folded.last, a.n);
    folded.by_outcome[a.outcome] = (folded.by_outcome[a.outcome] ?? 0) + 1;
    folded.steps_lost += a.steps_lost ?? 0;
  }
  return { attemptLog: log.slice(-keep), olderAttempts: folded };
}

/** Why this run should continue as new now, or null. */
export function historyDue(p: PreparedJob): string | null {
  const i = workflowInfo();
  const limit = p.historyEvents ?? DEFAULT_HISTORY_EVENTS;
  if (i.historyLength >= limit) return `history at ${i.historyLength} events (workers.historyEvents: ${limit})`;
  // The server also suggests it for a large history in bytes; a run that just started (whose carried
  // state alone may be large) goes on regardless, so the job can never continue as new in a loop.
  if (i.continueAsNewSuggested && i.historyLength >= MIN_RUN_EVENTS) return `the server suggested it at ${i.historyLength} events`;
  return null;
}

/** Watches the history while an attempt runs; once a rollover is due, stops the attempt like a pause. */
export function watchHistory(p: PreparedJob, scope: CancellationScope): { fired: string | null; stop(): void } {
  const w = {
    fired: null as string | null,
    done: false,
    stop() {
      w.done = true;
    },
  };
  condition(() => w.done || historyDue(p) !== null)
    .then(() => {
      if (w.done) return;
      w.fired = historyDue(p);
      log.info(`${workflowInfo().workflowId}: stopping the running attempt to continue as new: ${w.fired}`);
      setCurrentDetails(`continuing as new (${w.fired}): the trainer checkpoints and stops, the next run resumes from that checkpoint`);
      scope.cancel();
    })
    // A cancelled workflow rejects the condition; the job's own cancellation path handles that.
    .catch(() => undefined);
  return w;
}

export function snapshotJob(job: JobState): JobSnapshot {
  const { latest, cancelReason, cancelledBy, paused, controlSeq, ignoredMessages, lastIgnored, pausedAt, approval, attempts, interruptions, attemptLog } = job;
  const { resumedFromSteps, lastCheckpoint, checkpoints, validation, registered, startedAt, retries } = job;
  const capped = capAttemptLog(attemptLog, job.olderAttempts);
  return {
    ...{ latest, cancelReason, cancelledBy, paused, controlSeq, ignoredMessages, lastIgnored, pausedAt, approval, attempts, interruptions, ...capped },
    ...{ resumedFromSteps: resumedFromSteps.slice(-CARRIED_ATTEMPTS), lastCheckpoint, checkpoints, validation, registered, startedAt, retries: retries.slice(-CARRIED_ATTEMPTS) },
    workers: [...job.workers],
    skippedCheckpoints: job.skippedCheckpoints,
    suspects: job.suspects.snapshot(),
  };
}

export function restoreJob(job: JobState, s: JobSnapshot): void {
  const { workers, attemptLog, resumedFromSteps, skippedCheckpoints, suspects, retries, olderAttempts, ...rest } = s;
  Object.assign(job, rest);
  // Runs carried by an older version have neither.
  job.retries = Array.isArray(retries) ? retries : [];
  job.olderAttempts = olderAttempts ?? null;
  // Runs carried by an older version have no skipped checkpoints.
  job.skippedCheckpoints = skippedCheckpoints ?? [];
  job.suspects = CheckpointSuspects.restore(suspects);
  job.attemptLog.push(...attemptLog);
  job.resumedFromSteps.push(...resumedFromSteps);
  for (const w of workers) job.workers.add(w);
}

/**
 * The carried state, checked: a TrainingJob started by hand with a second argument (the Temporal CLI
 * can send anything) fails with a clear error instead of training on garbage.
 */
export function parseCarried(raw: unknown): Carried {
  const c = raw as Partial<Carried> | null;
  const problems: string[] = [];
  if (typeof c !== 'object' || c === null || c.kind !== 'kiln.continued') problems.push('it is not the state a TrainingJob carries when it continues as new (kind "kiln.continued")');
  else {
    if (typeof c.prepared?.jobId !== 'string' || typeof c.prepared.workDir !== 'string') problems.push('prepared: missing or not a prepared job');
    if (typeof c.job !== 'object' || c.job === null || !Array.isArray(c.job.attemptLog) || !Array.isArray(c.job.workers)) problems.push('job: missing or not a job state');
    else if (c.job.skippedCheckpoints !== undefined && !Array.isArray(c.job.skippedCheckpoints)) problems.push('job.skippedCheckpoints: not a list');
    if (typeof c.budget !== 'object' || c.budget === null) problems.push('budget: missing');
    if (typeof c.runs !== 'number') problems.push('runs: not a number');
    const r = c.retry === undefined ? null : retryRequestProblem(c.retry);
    if (r) problems.push(r);
  }
  if (problems.length) {
    throw ApplicationFailure.nonRetryable(`invalid second argument to TrainingJob: ${problems.join('; ')}; start a job with its spec only (kiln submit)`, ErrorType.InvalidJobSpec);
  }
  return c as Carried;
}

/**
 * Continues the job as new once its handlers finished, with everything it knows. Memo and search
 * attributes are passed on explicitly (the Web UI and `kiln list` read them).
 */
export async function continueJob(job: JobState, spec: JobSpec, c: Omit<Carried, 'kind' | 'job' | 'budget'> & { budget: AttemptBudget }, why: string): Promise<never> {
  await condition(allHandlersFinished);
  const info = workflowInfo();
  const carried: Carried = { kind: 'kiln.continued', runs: c.runs + 1, prepared: c.prepared, job: snapshotJob(job), budget: c.budget.snapshot(), pauseCheckpoint: c.pauseCheckpoint };
  log.info(`${job.jobId}: continuing as new (run ${carried.runs + 1}): ${why}`);
  return makeContinueAsNewFunc<(spec: JobSpec, carried?: Carried) => Promise<JobSummary>>({ memo: info.memo, typedSearchAttributes: info.typedSearchAttributes })(spec, carried);
}
