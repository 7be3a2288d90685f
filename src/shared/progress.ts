/**
 * Progress, in one shape: the train activity's report (signal `kiln.report`, also kept in heartbeat
 * details), the workflow's `status` query reply, and the one-line progress text.
 * Workflow-safe.
 */
import { z } from 'zod';

const num = z.number().finite();
const metrics = z.record(z.string().max(256), num);

export const GpuTelemetrySchema = z.object({
  index: z.string().max(64),
  name: z.string().max(256).optional(),
  utilizationPct: num.optional(),
  memoryUsedMiB: num.optional(),
  memoryTotalMiB: num.optional(),
});
export type GpuTelemetry = z.infer<typeof GpuTelemetrySchema>;

/**
 * A verified checkpoint: the local path the trainer wrote (and a resume restores it to) and, with
 * `storage.kind: s3`, the storage URI it was uploaded and verified under (`s3://bucket/prefix/jobs/…`).
 */
export const CheckpointRefSchema = z.object({
  step: z.number().int().min(0),
  path: z.string().max(4096),
  metrics,
  uri: z.string().max(4096).optional(),
  /** Size and sha256 recorded when the checkpoint was verified, checked before resuming (older manifests may lack sha256 above 256 MiB). */
  bytes: z.number().int().min(0).optional(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});
/** A recorded checkpoint an attempt did not resume from because it no longer matched what was verified. */
export const SkippedCheckpointSchema = z.object({ step: z.number().int().min(0), path: z.string().max(4096), problem: z.string().max(1000) });
export type SkippedCheckpoint = z.infer<typeof SkippedCheckpointSchema>;

/** A checkpoint the workflow tells an attempt not to resume from (suspect or quarantined: workflows/suspects.ts). */
export interface SkipRef {
  path: string;
  sha256?: string;
  quarantined: boolean;
}

/** The skip-list entry naming this checkpoint (same path; same sha256 where both are known), or null. */
export function isSkipped(c: { path: string; sha256?: string }, skip: readonly SkipRef[] | undefined): SkipRef | null {
  return skip?.find((s) => s.path === c.path && (s.sha256 === undefined || c.sha256 === undefined || s.sha256 === c.sha256)) ?? null;
}
export type CheckpointRef = z.infer<typeof CheckpointRefSchema>;

/**
 * Sent by the train activity to its workflow (signal `kiln.report`), and kept in heartbeat details.
 * The workflow parses every report with this schema (anyone can send that signal) and accepts it
 * only with the token it issued to the running attempt.
 */
export const ProgressReportSchema = z.object({
  /** The per-attempt token the workflow put into the train activity's input. */
  token: z.string().max(128).optional(),
  attempt: z.number().int().min(1),
  workerId: z.string().max(512),
  step: z.number().int().min(0),
  totalSteps: z.number().int().min(0).nullable(),
  epoch: num.nullable(),
  totalEpochs: num.nullable(),
  metrics,
  /** First step this attempt reported: checkpoint step + 1 after a resume. */
  firstStep: z.number().int().min(0).nullable(),
  resumedFrom: CheckpointRefSchema.nullable(),
  lastCheckpoint: CheckpointRefSchema.nullable(),
  checkpoints: z.array(CheckpointRefSchema).max(10_000),
  checkpointBytes: num,
  validation: metrics,
  gpuIds: z.array(z.string().max(64)).max(1024),
  gpu: z.array(GpuTelemetrySchema).max(1024).nullable(),
  malformedEvents: z.number().int().min(0),
  stepsPerSec: num.nullable(),
  etaMs: num.nullable(),
  lastProgressAt: z.string().max(64).nullable(),
  /** A checkpoint being uploaded to storage (not yet verified, not a resume point). */
  upload: z.object({ step: z.number().int().min(0), doneBytes: num, totalBytes: num, queued: z.number().int().min(0) }).nullable().optional(),
  /** Checkpoints this attempt gave up storing (every upload try failed): not resume points; the last one's step, error and whether its local copy was deleted. */
  uploadFailures: z
    .object({ count: z.number().int().min(1), last: z.object({ step: z.number().int().min(0), tries: z.number().int().min(1), error: z.string().max(4000), localDeleted: z.boolean() }) })
    .nullable()
    .optional(),
  /** This attempt found every recorded checkpoint unreachable and started over (onLostCheckpoints: restart). */
  restartedFromScratch: z.object({ stepsLost: z.number().int().min(0), reason: z.string().max(4000) }).nullable().optional(),
  /** Recorded checkpoints this attempt stepped over: changed on disk since they were verified. */
  skippedCheckpoints: z.array(SkippedCheckpointSchema).max(100).optional(),
  /** Final report of an attempt ended by cancel/pause: the checkpoint it saved on SIGTERM. */
  final: z.boolean().optional(),
});
export type ProgressReport = z.infer<typeof ProgressReportSchema>;

/** What every train heartbeat carries (a view of the report); a retry reads it back from heartbeatDetails. */
export type TrainHeartbeat = Pick<ProgressReport, 'attempt' | 'step' | 'epoch' | 'lastCheckpoint' | 'checkpoints' | 'metrics' | 'gpu' | 'workerId' | 'upload' | 'uploadFailures' | 'restartedFromScratch'> & {
  /** One sentence for people reading the raw details (Web UI, describe): `attempt 2 on host:12:gpu-gpu: epoch 3/5 · step 120/200 · loss 0.0183`. */
  line?: string;
};

export const PHASES = ['queued', 'preparing', 'training', 'evaluating', 'registering', 'awaiting-approval', 'completed', 'failed', 'cancelled', 'paused'] as const;
export type Phase = (typeof PHASES)[number];

/** `epoch 3/50 · step 120/640 · loss 0.018 · ETA 4m` */
export function progressLine(p: Pick<ProgressReport, 'step' | 'totalSteps' | 'epoch' | 'totalEpochs' | 'metrics' | 'etaMs' | 'upload' | 'uploadFailures' | 'restartedFromScratch'>, fmt: (ms: number) => string): string {
  const parts: string[] = [];
  if (p.epoch !== null) parts.push(`epoch ${p.epoch}${p.totalEpochs ? `/${p.totalEpochs}` : ''}`);
  parts.push(`step ${p.step}${p.totalSteps ? `/${p.totalSteps}` : ''}`);
  const loss = p.metrics.loss;
  if (typeof loss === 'number') parts.push(`loss ${loss.toPrecision(3)}`);
  if (p.etaMs !== null) parts.push(`ETA ${fmt(p.etaMs)}`);
  if (p.upload) parts.push(uploadLine(p.upload));
  if (p.uploadFailures) parts.push(uploadFailureLine(p.uploadFailures));
  if (p.restartedFromScratch) parts.push(`restarted from step 0: ${p.restartedFromScratch.stepsLost} steps lost (${p.restartedFromScratch.reason.split('\n')[0]})`);
  return parts.join(' · ');
}

export interface JobStatus {
  jobId: string;
  model: string;
  phase: Phase;
  step: number;
  totalSteps: number | null;
  loss: number | null;
  line: string;
}

/** A number as people read it: 4 significant digits for a fraction (0.0812345 → 0.08123); integers as they are. */
export function readableNumber(x: number): number {
  return Number.isFinite(x) && !Number.isInteger(x) ? Number(x.toPrecision(4)) : x;
}

/** Metrics with readableNumber applied to each value (heartbeat details, the job summary). */
export function readableMetrics(m: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, readableNumber(v)]));
}

/** `1 checkpoint not stored: step 40 after 3 failed uploads (…), not a resume point; local copy deleted` */
export function uploadFailureLine(f: NonNullable<ProgressReport['uploadFailures']>): string {
  const n = f.count === 1 ? '1 checkpoint' : `${f.count} checkpoints`;
  const local = f.last.localDeleted ? 'local copy deleted' : 'local copy kept (pinned)';
  const err = f.last.error.split('\n')[0]!;
  return `${n} not stored: step ${f.last.step} after ${f.last.tries} failed uploads (${err.length > 240 ? `${err.slice(0, 240)}…` : err}), not a resume point; ${local}`;
}

const GiB = 2 ** 30;
/** `checkpoint step 600 uploading 1.2/4.0 GiB (+1 queued)` */
export function uploadLine(u: NonNullable<ProgressReport['upload']>): string {
  const unit = u.totalBytes >= GiB / 10 ? { d: GiB, n: 'GiB' } : { d: 2 ** 20, n: 'MiB' };
  const q = u.queued ? ` (+${u.queued} queued)` : '';
  return `checkpoint step ${u.step} uploading ${(u.doneBytes / unit.d).toFixed(1)}/${(u.totalBytes / unit.d).toFixed(1)} ${unit.n}${q}`;
}
