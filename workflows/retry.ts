/**
 * The workflow side of `kiln retry` (issue 16, item 2; the client side is src/client/retry.ts).
 *
 * A closed run answers the `kiln.retryState` query (a control worker replays it): its spec, the state
 * continue-as-new would carry (continueAsNew.ts) and its checkpoints. The client starts a new run under
 * the same workflow id with that state and a retry request; this file applies the request in the new
 * run: the budgets start over (the carried budget is empty), the attempt log, checkpoints, suspects,
 * quarantine and pins carry over; the cancel and pause of the ended run are cleared; the first attempt
 * resumes from the chosen checkpoint, stepping over newer ones when it names an older one (suspects.ts `rewound`).
 * Not a workflow: workflows/index.ts does not export it.
 */
import { ApplicationFailure, log, setCurrentDetails, workflowInfo } from '@temporalio/workflow';
import { ErrorType } from '../src/shared/errors';
import type { CheckpointRef } from '../src/shared/progress';
import { chooseRetryStep, retryCheckpoint, retryLine, type RetryCheckpoint, type RetryRecord, type RetryRequest, type RetryState } from '../src/shared/retry';
import type { PreparedJob } from '../src/shared/spec';
import { type Carried, snapshotJob } from './continueAsNew';
import type { JobState } from './jobState';

/** The checkpoints the job knows of, as a retry lists them. */
export function retryCheckpoints(job: JobState): RetryCheckpoint[] {
  const byPath = new Map<string, CheckpointRef>();
  for (const c of job.recorded().checkpoints) byPath.set(c.path, c);
  const q = job.suspects.list.filter((s) => s.quarantined);
  return [...byPath.values()]
    .sort((a, b) => a.step - b.step)
    .map((c) => ({ step: c.step, path: c.path, quarantined: q.some((s) => s.path === c.path && (!s.sha256 || !c.sha256 || s.sha256 === c.sha256)), suspect: job.suspects.isSuspect(c) }));
}

/** The `kiln.retryState` answer: what a retry of this (ended) run starts from. */
export function retryState(job: JobState, spec: unknown, prepared: PreparedJob | null, runs: number): RetryState {
  const carried: Carried | null = prepared ? { kind: 'kiln.continued', runs, prepared, job: snapshotJob(job), budget: {}, pauseCheckpoint: null } : null;
  return { spec, carried, checkpoints: retryCheckpoints(job), registeredVersion: job.registered?.version ?? null };
}

/**
 * Applies a retry request in the new run. Checks the step again (the request may be forged) and fails
 * the run cleanly if it names no usable checkpoint. Returns the checkpoint the first attempt resumes from.
 */
export function applyRetry(job: JobState, r: RetryRequest): CheckpointRef | null {
  const known = job.recorded().checkpoints;
  const chosen = chooseRetryStep(retryCheckpoints(job), r.fromStep);
  if (!chosen.ok) throw ApplicationFailure.nonRetryable(`invalid second argument to TrainingJob: retry: ${chosen.error}; retry a job with kiln retry`, ErrorType.InvalidJobSpec);
  const from = retryCheckpoint(known, chosen.step);
  // The operator named it: a suspect checkpoint may be tried again (a quarantined one never).
  if (r.fromStep !== null) job.suspects.attemptEnded();
  // Going back: the ended run got as far as `until`; until the job passes it again, nothing newer than its own newest checkpoint.
  const until = Math.max(job.latest?.step ?? 0, ...known.map((c) => c.step), ...job.attemptLog.map((a) => a.last_step ?? 0));
  job.suspects.rewound = r.fromStep !== null && until > chosen.step ? { toStep: chosen.step, until } : null;
  job.lastCheckpoint = from;
  // The ended run's cancel and pause are not this run's.
  job.cancelReason = null;
  job.cancelledBy = null;
  job.paused = false;
  job.pausedAt = null;
  job.approval = null;
  const rec: RetryRecord = { by: r.by, reason: r.reason, from_step: chosen.step, previous_run_id: r.previousRunId, previous_outcome: r.previousOutcome, at: r.at, attempt: job.attempts + 1 };
  job.retries.push(rec);
  log.info(`${job.jobId}: ${retryLine(rec)} (run ${workflowInfo().runId})`);
  setCurrentDetails(retryLine(rec));
  return from;
}
