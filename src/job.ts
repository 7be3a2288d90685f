/**
 * The job spec (workflow input), the prepared job (what the control worker resolved from config),
 * progress reports and the job summary. Workflow-safe: zod and pure code only.
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
  timeouts: z
    .strictObject({
      heartbeat: ms.optional(),
      stall: ms.optional(),
      startToClose: ms.optional(),
      cancelGrace: ms.optional(),
      maxAttempts: z.number().int().min(1).max(100).optional(),
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
  maxAttempts: number;
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
  workDir: string;
}

export interface GpuTelemetry {
  index: string;
  name?: string;
  utilizationPct?: number;
  memoryUsedMiB?: number;
  memoryTotalMiB?: number;
}

export interface CheckpointRef {
  step: number;
  path: string;
  metrics: Record<string, number>;
}

/** Sent by the train activity to its workflow (signal `kiln.report`), and kept in heartbeat details. */
export interface ProgressReport {
  attempt: number;
  workerId: string;
  step: number;
  totalSteps: number | null;
  epoch: number | null;
  totalEpochs: number | null;
  metrics: Record<string, number>;
  /** First step this attempt reported: checkpoint step + 1 after a resume. */
  firstStep: number | null;
  resumedFrom: CheckpointRef | null;
  lastCheckpoint: CheckpointRef | null;
  checkpoints: CheckpointRef[];
  checkpointBytes: number;
  validation: Record<string, number>;
  gpuIds: string[];
  gpu: GpuTelemetry[] | null;
  malformedEvents: number;
  stepsPerSec: number | null;
  etaMs: number | null;
  lastProgressAt: string | null;
  /** Final report of an attempt ended by cancel/pause: the checkpoint it saved on SIGTERM. */
  final?: boolean;
}

export interface TrainResult {
  attempt: number;
  workerId: string;
  steps: number;
  epochs: number | null;
  finalLoss: number | null;
  metrics: Record<string, number>;
  validation: Record<string, number>;
  modelPath: string | null;
  lastCheckpoint: CheckpointRef | null;
  checkpoints: CheckpointRef[];
  gpuIds: string[];
  gpu: GpuTelemetry[] | null;
  firstStep: number | null;
  resumedFrom: CheckpointRef | null;
  durationMs: number;
}

export const PHASES = ['queued', 'preparing', 'training', 'evaluating', 'registering', 'awaiting-approval', 'completed', 'failed', 'cancelled', 'paused'] as const;
export type Phase = (typeof PHASES)[number];

export interface JobSummary {
  jobId: string;
  model: string;
  outcome: 'completed' | 'failed' | 'cancelled';
  training_metrics: { final_loss: number | null; epochs: number | null; steps: number; duration_ms: number };
  validation_metrics: Record<string, number>;
  resource_usage: { gpu_ids: string[]; gpu: GpuTelemetry[] | null };
  artifacts: { model_path: string | null; checkpoints: CheckpointRef[]; last_checkpoint: CheckpointRef | null };
  registry: {
    version: number | null;
    stage: string | null;
    complete: boolean | null;
    missing_metrics: string[];
    decision: string | null;
  };
  session_info: {
    attempts: number;
    workers: string[];
    started_at: string;
    ended_at: string;
    cancellation_reason: string | null;
    failure: string | null;
    resumed_from_steps: number[];
    /** The final attempt's resume: the checkpoint step it started from and the first step it reported. */
    resume: { from_step: number; first_step: number | null } | null;
  };
}

/** `epoch 3/50 · step 120/640 · loss 0.018 · ETA 4m` */
export function progressLine(p: Pick<ProgressReport, 'step' | 'totalSteps' | 'epoch' | 'totalEpochs' | 'metrics' | 'etaMs'>, fmt: (ms: number) => string): string {
  const parts: string[] = [];
  if (p.epoch !== null) parts.push(`epoch ${p.epoch}${p.totalEpochs ? `/${p.totalEpochs}` : ''}`);
  parts.push(`step ${p.step}${p.totalSteps ? `/${p.totalSteps}` : ''}`);
  const loss = p.metrics.loss;
  if (typeof loss === 'number') parts.push(`loss ${loss.toPrecision(3)}`);
  if (p.etaMs !== null) parts.push(`ETA ${fmt(p.etaMs)}`);
  return parts.join(' · ');
}
