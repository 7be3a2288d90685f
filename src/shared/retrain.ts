/**
 * Retraining: ids, the RetrainModel input/result shapes and the need-check decision. Workflow-safe:
 * pure code only (the activity in activities/retrain.ts gathers the facts, this decides).
 */
import { defineQuery } from '@temporalio/workflow';
import { z } from 'zod';
import { formatDuration } from './duration';
import { NAME_HINT, NAME_RE } from './names';
import { TRIGGERS, type JobSpec, type Trigger } from './spec';
import type { JobSummary } from './summary';

/** Schedule ids Kiln owns: `kiln-retrain-<model>`. */
export const SCHEDULE_ID_PREFIX = 'kiln-retrain-';
export const scheduleId = (model: string): string => `${SCHEDULE_ID_PREFIX}${model}`;
/** The schedule action's workflow id; the server appends the nominal fire time to it. */
export const scheduledRetrainId = (model: string): string => `retrain-${model}`;

/**
 * The dedupe key: one TrainingJob per model and data version. Every trigger (schedule, manual,
 * backfill) starts its child under this id, so a second trigger for the same data is refused by the
 * server instead of starting a second training.
 */
export function trainingIdFor(model: string, fingerprint: string): string {
  return `train-${model}-d${fingerprint.slice(0, 12)}`;
}

export const RetrainInputSchema = z.strictObject({
  model: z.string().regex(NAME_RE, { message: `invalid model name: ${NAME_HINT}` }),
  trigger: z.enum(TRIGGERS).default('manual'),
  /** Skip the need-checks (data changed, max age, cooldown); never the dedupe. */
  force: z.boolean().optional(),
});
export type RetrainInput = z.input<typeof RetrainInputSchema>;
/** The input once parsed (trigger defaulted). */
export type RetrainRequest = z.output<typeof RetrainInputSchema>;

/** What the need-checks look at; gathered by the `checkRetrainNeed` activity. */
export interface RetrainFacts {
  fingerprint: string;
  production: { version: number; datasetFingerprint: string; createdAt: string } | null;
  lastTrainedAt: string | null;
  nowMs: number;
}

/** The `when` and `minInterval` part of `models.<m>.retrain`, with defaults for models without one. */
export interface NeedPolicy {
  dataChanged: boolean;
  maxAgeMs: number | null;
  always: boolean;
  minIntervalMs: number;
}

export const DEFAULT_NEED_POLICY: NeedPolicy = { dataChanged: true, maxAgeMs: null, always: false, minIntervalMs: 0 };

export interface NeedDecision {
  train: boolean;
  reason: string;
}

const short = (fp: string): string => `${fp.slice(0, 8)}…`;

/**
 * Evaluates the need-checks in a fixed order: force, cooldown (minInterval), always, no production
 * version yet, data changed, production too old. The reason reads as a sentence in the UI.
 */
export function evaluateNeed(policy: NeedPolicy, f: RetrainFacts, force: boolean): NeedDecision {
  if (force) return { train: true, reason: `forced (need-checks skipped; data ${short(f.fingerprint)})` };
  if (policy.minIntervalMs > 0 && f.lastTrainedAt) {
    const since = f.nowMs - Date.parse(f.lastTrainedAt);
    if (since < policy.minIntervalMs) {
      return { train: false, reason: `cooldown: last training ${formatDuration(since)} ago, minInterval is ${formatDuration(policy.minIntervalMs)}` };
    }
  }
  if (policy.always) return { train: true, reason: `when.always (data ${short(f.fingerprint)})` };
  const prod = f.production;
  if (!prod) return { train: true, reason: `no production version yet (data ${short(f.fingerprint)})` };
  if (policy.dataChanged && prod.datasetFingerprint !== f.fingerprint) {
    return { train: true, reason: `data changed since v${prod.version} (fingerprint ${short(prod.datasetFingerprint)} → ${short(f.fingerprint)})` };
  }
  const age = f.nowMs - Date.parse(prod.createdAt);
  if (policy.maxAgeMs !== null && age >= policy.maxAgeMs) {
    return { train: true, reason: `production v${prod.version} is ${formatDuration(age)} old (maxAge ${formatDuration(policy.maxAgeMs)})` };
  }
  if (policy.dataChanged) {
    return { train: false, reason: `data unchanged since v${prod.version} (fingerprint ${short(f.fingerprint)})` };
  }
  return {
    train: false,
    reason: policy.maxAgeMs !== null
      ? `production v${prod.version} is ${formatDuration(age)} old, under maxAge ${formatDuration(policy.maxAgeMs)}`
      : `no need-check applies (when.dataChanged is off, no maxAge, always is off)`,
  };
}

/** The `checkRetrainNeed` activity's answer. */
export interface RetrainCheck extends NeedDecision {
  fingerprint: string;
  /** How the version was found: the resolver, and one line (`3 files, 1.2 GiB (metadata)`). */
  dataset: { resolver: string; detail: string };
  /** Deterministic child id from model + fingerprint. */
  childId: string;
  /** The TrainingJob input, built from temporal.yaml on the control worker. */
  spec: JobSpec;
  staticSummary: string;
  /** The trigger as recorded: `backfill` when the nominal fire time lies beyond the catch-up window. */
  trigger: Trigger;
  productionVersion: number | null;
  /**
   * The registry already holds a version from this child id: an earlier run trained this data version
   * (it may have failed or been cancelled later, e.g. while awaiting approval, or aged out of the
   * server's retention). Starting the id again could only end in a refused registration.
   */
  registered: { version: number; stage: string } | null;
}

export type RetrainOutcome = 'skipped' | 'trained' | 'deduped';

export interface RetrainResult {
  model: string;
  trigger: Trigger;
  force: boolean;
  outcome: RetrainOutcome;
  reason: string;
  fingerprint: string;
  /** How the data version was found (resolver, one line); absent in runs from before resolvers. */
  dataset?: { resolver: string; detail: string };
  /** The TrainingJob this run started or found; null when skipped. */
  childId: string | null;
  /** The child's summary when this run started it and waited for it. */
  training: JobSummary | null;
}

/** Live state of a RetrainModel run, for `kiln train` to print the decision before the training ends. */
/** RetrainModel's KilnPhase: checking → skipped | deduped | training → trained | failed. */
export const RETRAIN_PHASES = ['checking', 'skipped', 'deduped', 'training', 'trained', 'failed'] as const;
export type RetrainPhase = (typeof RETRAIN_PHASES)[number];

export interface RetrainState {
  phase: 'checking' | 'training' | 'done';
  outcome: RetrainOutcome | null;
  reason: string | null;
  fingerprint: string | null;
  childId: string | null;
}

export const retrainStateQuery = defineQuery<RetrainState>('retrainState');
