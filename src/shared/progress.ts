/**
 * Progress, in one shape: the train activity's report (signal `kiln.report`, also kept in heartbeat
 * details), the workflow's `status` query reply, and the one-line progress text.
 * Workflow-safe.
 */
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

/** What every train heartbeat carries (a view of the report); a retry reads it back from heartbeatDetails. */
export type TrainHeartbeat = Pick<ProgressReport, 'attempt' | 'step' | 'epoch' | 'lastCheckpoint' | 'checkpoints' | 'metrics' | 'gpu' | 'workerId'>;

export const PHASES = ['queued', 'preparing', 'training', 'evaluating', 'registering', 'awaiting-approval', 'completed', 'failed', 'cancelled', 'paused'] as const;
export type Phase = (typeof PHASES)[number];

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


export interface JobStatus {
  jobId: string;
  model: string;
  phase: Phase;
  step: number;
  totalSteps: number | null;
  loss: number | null;
  line: string;
}
