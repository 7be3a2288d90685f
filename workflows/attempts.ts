/**
 * What a failed train attempt costs the job, decided by the workflow (each attempt is one activity
 * with no retries of its own). Two budgets:
 *
 * - interruptions (the worker was lost or drained, the attempt was superseded) never fail a job by
 *   count unless `timeouts.maxInterruptions` is set;
 * - trainer failures (non-zero exit, crash, stall) count against `timeouts.maxAttempts` only while
 *   the job makes no progress: an attempt that got a checkpoint beyond its resume point resets the
 *   count. Failures that come faster than THRASH_WINDOW_MS allows fail the job as TrainerThrashing.
 *
 * Backoff between attempts starts at 1 s, doubles up to 30 s while attempts end without progress, and
 * starts over after progress; an interruption after progress retries at once (no backoff). Not a workflow: workflows/index.ts does not export it.
 */
import { ActivityFailure, ApplicationFailure, CancelledFailure, TimeoutFailure } from '@temporalio/workflow';
import { ErrorType, NON_RETRYABLE_TYPES } from '../src/shared/errors';
import type { Timeouts } from '../src/shared/spec';
import type { AttemptRecord } from '../src/shared/summary';

/** Failure types that mean "the attempt was interrupted", not "the trainer failed". */
export const INTERRUPTION_TYPES: readonly string[] = [
  ErrorType.AttemptSuperseded,
  ErrorType.WorkerLost,
  ErrorType.WorkerShutdown,
  ErrorType.StorageUnavailable,
  // What the SDK reports for an activity cancelled by its own worker's shutdown.
  'CancelledFailure',
];

const BACKOFF_INITIAL_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
export const THRASH_WINDOW_MS = 10 * 60_000;

export type FailureKind = 'interruption' | 'trainer' | 'fatal';

/** What an attempt's failure was, in words, and which budget it draws on. */
export function classify(err: unknown): { kind: FailureKind; cause: string; message: string } {
  const c = err instanceof ActivityFailure ? err.cause : err;
  if (c instanceof TimeoutFailure) {
    const cause = c.timeoutType === 'HEARTBEAT' ? 'worker lost (no heartbeat within the heartbeat timeout)' : `the attempt timed out (${String(c.timeoutType).toLowerCase().replaceAll('_', '-')})`;
    return { kind: c.timeoutType === 'HEARTBEAT' ? 'interruption' : 'trainer', cause, message: cause };
  }
  if (c instanceof CancelledFailure) {
    const cause = `worker shut down (${c.message || 'drained'})`;
    return { kind: 'interruption', cause, message: cause };
  }
  const message = c instanceof Error ? c.message : String(c);
  const cause = message.split('\n')[0] ?? message;
  if (c instanceof ApplicationFailure) {
    if (c.nonRetryable || (NON_RETRYABLE_TYPES as readonly string[]).includes(c.type ?? '')) return { kind: 'fatal', cause, message };
    if (INTERRUPTION_TYPES.includes(c.type ?? '')) return { kind: 'interruption', cause, message };
  }
  return { kind: 'trainer', cause, message };
}

/** What an AttemptBudget carries into the next run when the job continues as new. */
export interface BudgetSnapshot {
  failuresSinceProgress: number;
  interruptions: number;
  failureTimes: number[];
  backoffMs: number;
}

/** The two budgets and the backoff, across the attempts of one job (and its runs). */
export class AttemptBudget {
  failuresSinceProgress = 0;
  interruptions = 0;
  private failureTimes: number[] = [];
  private backoffMs = BACKOFF_INITIAL_MS;

  constructor(private readonly t: Pick<Timeouts, 'maxAttempts' | 'maxInterruptions'>) {}

  snapshot(): BudgetSnapshot {
    return { failuresSinceProgress: this.failuresSinceProgress, interruptions: this.interruptions, failureTimes: [...this.failureTimes], backoffMs: this.backoffMs };
  }

  static restore(t: Pick<Timeouts, 'maxAttempts' | 'maxInterruptions'>, s: Partial<BudgetSnapshot>): AttemptBudget {
    const b = new AttemptBudget(t);
    const num = (v: unknown, d: number): number => (typeof v === 'number' && Number.isFinite(v) ? v : d);
    b.failuresSinceProgress = num(s.failuresSinceProgress, 0);
    b.interruptions = num(s.interruptions, 0);
    b.failureTimes = Array.isArray(s.failureTimes) ? s.failureTimes.filter((x) => typeof x === 'number') : [];
    b.backoffMs = num(s.backoffMs, BACKOFF_INITIAL_MS);
    return b;
  }

  /** Thrashing: this many trainer failures inside THRASH_WINDOW_MS, progress or not. */
  get thrashLimit(): number {
    return Math.max(10, 3 * this.t.maxAttempts);
  }

  /**
   * Records a failed attempt. Returns the delay before the next one, or throws the job's failure
   * when a budget is spent.
   */
  charge(kind: Exclude<FailureKind, 'fatal'>, progressed: boolean, cause: string, nowMs: number): number {
    if (progressed) {
      this.failuresSinceProgress = 0;
      this.backoffMs = BACKOFF_INITIAL_MS;
    }
    if (kind === 'interruption') {
      this.interruptions += 1;
      if (this.t.maxInterruptions !== null && this.interruptions > this.t.maxInterruptions) {
        throw ApplicationFailure.nonRetryable(`interrupted ${this.interruptions} times (timeouts.maxInterruptions: ${this.t.maxInterruptions}); last: ${cause}`, ErrorType.TooManyInterruptions);
      }
    } else {
      this.failuresSinceProgress += 1;
      this.failureTimes = [...this.failureTimes.filter((t) => nowMs - t < THRASH_WINDOW_MS), nowMs];
      if (this.failuresSinceProgress >= this.t.maxAttempts) {
        throw ApplicationFailure.nonRetryable(
          `trainer failed ${this.failuresSinceProgress} times in a row without progress (timeouts.maxAttempts: ${this.t.maxAttempts}); last: ${cause}`,
          ErrorType.TrainingFailed,
        );
      }
      if (this.failureTimes.length >= this.thrashLimit) {
        throw ApplicationFailure.nonRetryable(`trainer failed ${this.failureTimes.length} times within ${THRASH_WINDOW_MS / 60_000} minutes (thrashing); last: ${cause}`, ErrorType.TrainerThrashing);
      }
    }
    // An interruption after progress is not the trainer's fault: the next attempt starts at once
    // (still a timer command, 1 ms, so histories replay either way); a trainer failure waits.
    if (progressed && kind === 'interruption') return 0;
    const delay = progressed ? BACKOFF_INITIAL_MS : this.backoffMs;
    if (!progressed) this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    return delay;
  }
}

/** Closes an attempt's record: how it ended, and how many of its steps the next one must redo. */
export function endAttempt(rec: AttemptRecord, outcome: AttemptRecord['outcome'], cause: string | null, lastStep: number | null, resumeNext: number): void {
  rec.ended_at = new Date().toISOString();
  rec.outcome = outcome;
  rec.cause = cause;
  rec.last_step = lastStep;
  rec.steps_lost = lastStep === null ? null : Math.max(0, lastStep - resumeNext);
}
