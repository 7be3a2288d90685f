/**
 * The job spec (workflow input) and the prepared job (what the control worker resolved from
 * config). Workflow-safe: zod and pure code only.
 */
import { z } from 'zod';
import { parseDuration } from './duration';
import { JOB_ID_HINT, JOB_ID_RE, NAME_HINT, NAME_RE } from './names';

const name = (what: string) => z.string().regex(NAME_RE, { message: `invalid ${what} name: ${NAME_HINT}` }).refine((s) => !s.includes('..'), `invalid ${what} name: ".." is not allowed`);
const ms = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const d = parseDuration(v);
  if (d === undefined) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a non-negative duration (e.g. "10s")` });
    return z.NEVER;
  }
  return d;
});

export const TRIGGERS = ['manual', 'schedule', 'backfill'] as const;
export type Trigger = (typeof TRIGGERS)[number];

/** What a client submits. A job never carries a command line: only a trainer name and params. */
export const JobSpecSchema = z.strictObject({
  model: name('model'),
  trainer: name('trainer'),
  params: z.record(z.string().max(128), z.unknown()).default({}),
  dataset: z.string().min(1).max(4096),
  /** Fingerprint of the dataset version, when the caller computed it (RetrainModel does). */
  datasetFingerprint: z.string().max(128).optional(),
  pool: name('pool').default('gpu'),
  gpus: z.number().int().min(0).max(64).default(1),
  trigger: z.enum(TRIGGERS).default('manual'),
  /**
   * The hash of the temporal.yaml the client validated this spec with (KilnConfig.hash; submitJob
   * sets it). A worker whose config has another hash refuses the job with WorkerConfigMismatch.
   */
  configHash: z.string().regex(/^[0-9a-f]{12}$/, { message: 'configHash: 12 lowercase hex digits (kiln config check --json prints it per model, as jobHashes)' }).optional(),
  /** Fine-tuning: a checkpoint to start from (must lie under artifacts.root). */
  baseCheckpoint: z.string().max(4096).optional(),
  retention: z
    .strictObject({
      keepLatest: z.number().int().min(1).max(1000).optional(),
      keepBest: z.number().int().min(0).max(1000).optional(),
      metric: z.string().max(128).optional(),
      direction: z.enum(['min', 'max']).optional(),
    })
    .optional(),
  /** See `onLostCheckpoints` of a model in temporal.yaml; overrides it. */
  onLostCheckpoints: z.enum(['fail', 'restart']).optional(),
  timeouts: z
    .strictObject({
      heartbeat: ms.optional(),
      stall: ms.optional(),
      startToClose: ms.optional(),
      cancelGrace: ms.optional(),
      maxAttempts: z.number().int().min(1).max(100).optional(),
      maxInterruptions: z.number().int().min(1).max(100_000).optional(),
    })
    .optional(),
});
export type JobSpecInput = z.input<typeof JobSpecSchema>;
export type JobSpec = z.output<typeof JobSpecSchema>;

export const JobIdSchema = z.string().regex(JOB_ID_RE, { message: `invalid job id: ${JOB_ID_HINT}` }).refine((s) => !s.includes('..'), 'invalid job id: ".." is not allowed');

export interface Timeouts {
  heartbeatMs: number;
  stallMs: number;
  startToCloseMs: number;
  cancelGraceMs: number;
  /** Trainer failures in a row without progress before the job fails. */
  maxAttempts: number;
  /** Interruptions (worker lost, drained, superseded) before the job fails; null: unlimited. */
  maxInterruptions: number | null;
}

export interface Retention {
  keepLatest: number;
  keepBest: number;
  metric: string;
  direction: 'min' | 'max';
}

export interface PromotionPolicyConfig {
  metric: string;
  direction: 'min' | 'max';
  minImprovement: number;
  improvementKind: 'absolute' | 'relative';
  mode: 'auto' | 'approval';
  approvalTimeoutMs: number;
}

/** The spec resolved against the control worker's config by the `prepareJob` activity. */
export interface PreparedJob {
  jobId: string;
  spec: JobSpec;
  /** Params with the trainer's defaults filled in. */
  params: Record<string, unknown>;
  datasetFingerprint: string;
  timeouts: Timeouts;
  retention: Retention;
  requiredMetrics: string[];
  promotion: PromotionPolicyConfig | null;
  evaluate: { command: boolean; queue: 'control' | 'gpu'; timeoutMs: number };
  progressIntervalMs: number;
  /** The run continues as new before its history reaches this many events (absent in jobs prepared before it existed). */
  historyEvents?: number;
  workDir: string;
  /**
   * Paths in (or above) the work dir that registered versions pin against retention, found by the
   * control worker in the registry when the job was prepared; GPU workers never open the registry.
   * Absent in jobs prepared by older builds: nothing pinned.
   */
  pinned?: string[];
  /** What an attempt does when every recorded checkpoint is unreachable (absent in older histories: fail). */
  onLostCheckpoints?: 'fail' | 'restart';
}

/** `spirals · example · lr=0.1 epochs=5` for the UI's static summary. */
export function staticSummary(spec: JobSpec): string {
  const params = Object.entries(spec.params)
    .slice(0, 6)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join(' ');
  return `${spec.model} · ${spec.trainer}${params ? ` · ${params}` : ''} · pool ${spec.pool}×${spec.gpus}`.slice(0, 400);
}

/** Smallest accepted timeouts: below them a dead worker or a hung trainer could go unnoticed. */
export const TIMEOUT_MINIMUMS = { heartbeatMs: 1000, stallMs: 1000 } as const;

/**
 * What is wrong with a job's effective timeouts (config < model < spec), by path, with the fix. The
 * stall timeout may be shorter than the heartbeat: the worker checks it locally, every tick.
 */
export function timeoutProblems(t: Timeouts, at = 'timeouts'): string[] {
  const problems: string[] = [];
  if (t.heartbeatMs < TIMEOUT_MINIMUMS.heartbeatMs) {
    problems.push(`${at}.heartbeat: ${t.heartbeatMs} ms is below the minimum of 1s (a dead worker would go unnoticed); use e.g. "10s"`);
  }
  if (t.stallMs < TIMEOUT_MINIMUMS.stallMs) problems.push(`${at}.stall: ${t.stallMs} ms is below the minimum of 1s (every pause between steps would count as a stall); use e.g. "2m"`);
  if (t.startToCloseMs < t.heartbeatMs) problems.push(`${at}.startToClose: ${t.startToCloseMs} ms is shorter than the heartbeat timeout (${t.heartbeatMs} ms); use e.g. "7d"`);
  return problems;
}
