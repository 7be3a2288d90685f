/**
 * `kiln retry` (issue 16, item 2): a TrainingJob whose latest run ended failed, cancelled, terminated
 * or timed out is started again under the same workflow id, with the state continue-as-new carries
 * (workflows/continueAsNew.ts) plus a retry request. What it may resume from is decided here, by the
 * one rule both sides use: the CLI (to refuse with the list of steps) and the workflow (which checks
 * the request again: anyone can start a run with any second argument). Workflow-safe.
 */
import type { CheckpointRef } from './progress';

/** What the operator asked for; part of the carried state of the retried run. */
export interface RetryRequest {
  by: string;
  reason: string;
  /** The checkpoint step to resume from; 0 trains again from scratch; null: the newest usable one. */
  fromStep: number | null;
  /** The run that ended (its run id) and how (failed, cancelled, terminated, timed out). */
  previousRunId: string;
  previousOutcome: string;
  at: string;
}

/** One retry, as the summary and `kiln status` show it. */
export interface RetryRecord {
  by: string;
  reason: string;
  /** The step the retried run resumed from (0: from scratch). */
  from_step: number;
  previous_run_id: string;
  previous_outcome: string;
  at: string;
  /** The first attempt of the retried run. */
  attempt: number;
}

/** A checkpoint as `kiln retry` lists it. */
export interface RetryCheckpoint {
  step: number;
  path: string;
  quarantined: boolean;
  /** The checkpoint the last failed attempt was suspected on (the default skips it; naming it is allowed). */
  suspect: boolean;
}

/** The `kiln.retryState` query's answer, from a (closed) TrainingJob run. */
export interface RetryState {
  spec: unknown;
  /** The continue-as-new state of the run; null when the job never got past prepare. */
  carried: unknown;
  checkpoints: RetryCheckpoint[];
  registeredVersion: number | null;
}

export const MAX_RETRY_TEXT = 500;

/** The checkpoints a retry can resume from: verified and not quarantined, oldest first. */
export function usableCheckpoints(cps: readonly RetryCheckpoint[]): RetryCheckpoint[] {
  return cps.filter((c) => !c.quarantined).sort((a, b) => a.step - b.step);
}

/**
 * The step a retry resumes from, or why it cannot: an explicit step must be one of the usable
 * checkpoints (or 0, from scratch); without one, the newest usable checkpoint that is not suspect,
 * and a job with none must say `--from-checkpoint 0` (it loses every step it trained).
 */
export function chooseRetryStep(cps: readonly RetryCheckpoint[], fromStep: number | null): { ok: true; step: number } | { ok: false; error: string } {
  const usable = usableCheckpoints(cps);
  const steps = usable.map((c) => c.step).join(', ');
  const quarantined = cps.filter((c) => c.quarantined).map((c) => c.step);
  const q = quarantined.length ? `; quarantined (never resumed from): ${quarantined.join(', ')}` : '';
  if (fromStep !== null) {
    if (!Number.isSafeInteger(fromStep) || fromStep < 0) return { ok: false, error: `--from-checkpoint must be a step number >= 0, got ${fromStep}` };
    if (fromStep === 0 || usable.some((c) => c.step === fromStep)) return { ok: true, step: fromStep };
    const why = quarantined.includes(fromStep) ? `checkpoint step ${fromStep} is quarantined` : `no verified checkpoint at step ${fromStep}`;
    return { ok: false, error: `${why}; available steps: ${steps || 'none'} (or 0 to train again from scratch)${q}` };
  }
  const pick = [...usable].reverse().find((c) => !c.suspect) ?? null;
  if (pick) return { ok: true, step: pick.step };
  return { ok: false, error: `the job has no verified checkpoint to resume from${usable.length ? ` other than suspect step(s) ${steps}` : ''}${q}; name one with --from-checkpoint STEP, or --from-checkpoint 0 to train again from scratch (every step is lost)` };
}

/** The checkpoint a retry resumes from: the newest verified one at `step` (null for step 0). */
export function retryCheckpoint(cps: readonly CheckpointRef[], step: number): CheckpointRef | null {
  if (step === 0) return null;
  return [...cps].reverse().find((c) => c.step === step) ?? null;
}

/** Checks a retry request from the carried state (anyone can start a run with any argument); returns the problem or null. */
export function retryRequestProblem(raw: unknown): string | null {
  const r = raw as Partial<RetryRequest> | null;
  if (typeof r !== 'object' || r === null) return 'retry: not an object';
  if (r.fromStep !== null && (typeof r.fromStep !== 'number' || !Number.isSafeInteger(r.fromStep) || r.fromStep < 0)) return 'retry.fromStep: not a step number >= 0 or null';
  for (const k of ['by', 'reason', 'previousRunId', 'previousOutcome', 'at'] as const) {
    if (typeof r[k] !== 'string' || r[k].length > MAX_RETRY_TEXT) return `retry.${k}: not a string of at most ${MAX_RETRY_TEXT} characters`;
  }
  return null;
}

/** One line in words: `retried by ann (fixed the data) at … after the run … failed, from checkpoint step 10 (attempt 3 onwards)`. */
export function retryLine(r: RetryRecord): string {
  const from = r.from_step ? `from checkpoint step ${r.from_step}` : 'from step 0 (from scratch)';
  return `retried by ${r.by}${r.reason ? ` (${r.reason})` : ''} at ${r.at} after the run ${r.previous_run_id} ${r.previous_outcome}, ${from} (attempt ${r.attempt} onwards)`;
}
