/**
 * What a train attempt knows about its trainer's progress, and the three shapes it leaves in:
 * heartbeat details (TrainHeartbeat, read back by a retry), the report signalled to the workflow
 * (ProgressReport), and the activity's result (TrainResult).
 */
import type { Context } from '@temporalio/activity';
import type { WorkflowHandle } from '@temporalio/client';
import type { Logger } from '../../src/logger';
import { reportSignal } from '../../src/shared/messages';
import { progressLine, type CheckpointRef, type GpuTelemetry, type ProgressReport, type TrainHeartbeat } from '../../src/shared/progress';
import { formatDuration } from '../../src/shared/duration';
import type { TrainResult } from '../../src/shared/summary';
import { diskBytes } from '../../src/supervisor/retention';
import type { TrainerEvent } from '../../src/supervisor/protocol';

/** Steps/s is measured over the last this many progress events. */
const RATE_WINDOW = 20;

/** The heartbeat while the attempt waits for GPUs: the resume point, nothing trained yet. */
export function waitingHeartbeat(a: { attempt: number; workerId: string; resumedFrom: CheckpointRef | null; checkpoints: CheckpointRef[] }): TrainHeartbeat {
  const { attempt, resumedFrom, checkpoints, workerId } = a;
  const line = `attempt ${attempt} on ${workerId}: waiting for a free GPU (resumes from step ${resumedFrom?.step ?? 0})`;
  return { line, attempt, step: resumedFrom?.step ?? 0, epoch: null, lastCheckpoint: resumedFrom, checkpoints, metrics: {}, gpu: null, workerId };
}

/** Metrics as people read them: 4 significant digits (the report to the workflow keeps full precision). */
function rounded(m: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Number.isFinite(v) ? Number(v.toPrecision(4)) : v]));
}

export class TrainProgress {
  step: number;
  totalSteps: number | null = null;
  epoch: number | null = null;
  totalEpochs: number | null = null;
  metrics: Record<string, number> = {};
  validation: Record<string, number> = {};
  modelPath: string | null = null;
  firstStep: number | null = null;
  malformed = 0;
  /** When the step last changed (epoch ms): the stall clock. */
  lastAdvance = Date.now();
  lastProgressAt: string | null = null;
  gpu: GpuTelemetry[] | null = null;
  /** Kept checkpoints, oldest first. */
  checkpoints: CheckpointRef[];
  checkpointBytes: number;
  /** The checkpoint upload in flight (shared storage), for heartbeat details and the status line. */
  uploadState: () => ProgressReport['upload'] = () => null;
  /** Set when this attempt found every recorded checkpoint unreachable and started from step 0. */
  restartedFromScratch: ProgressReport['restartedFromScratch'] = null;
  private readonly rateWindow: Array<{ t: number; step: number }> = [];

  constructor(
    readonly attempt: number,
    readonly workerId: string,
    readonly resumedFrom: CheckpointRef | null,
    checkpoints: CheckpointRef[],
    readonly gpuIds: string[],
  ) {
    this.step = resumedFrom?.step ?? 0;
    this.checkpoints = checkpoints;
    this.checkpointBytes = this.diskUsage();
  }

  lastCheckpoint(): CheckpointRef | null {
    return this.checkpoints.length ? this.checkpoints[this.checkpoints.length - 1]! : this.resumedFrom;
  }

  stepsPerSec(): number | null {
    const w = this.rateWindow;
    if (w.length < 2) return null;
    const dt = (w[w.length - 1]!.t - w[0]!.t) / 1000;
    return dt > 0 ? (w[w.length - 1]!.step - w[0]!.step) / dt : null;
  }

  onProgress(e: Extract<TrainerEvent, { type: 'progress' }>): void {
    if (this.firstStep === null) this.firstStep = e.step;
    if (e.step !== this.step) this.lastAdvance = Date.now();
    this.step = e.step;
    this.totalSteps = e.total_steps ?? this.totalSteps;
    this.epoch = e.epoch ?? this.epoch;
    this.totalEpochs = e.total_epochs ?? this.totalEpochs;
    this.metrics = { ...this.metrics, ...e.metrics };
    this.lastProgressAt = new Date().toISOString();
    this.rateWindow.push({ t: Date.now(), step: e.step });
    if (this.rateWindow.length > RATE_WINDOW) this.rateWindow.shift();
  }

  setCheckpoints(checkpoints: CheckpointRef[]): void {
    this.checkpoints = checkpoints;
    this.checkpointBytes = this.diskUsage();
  }

  private diskUsage(): number {
    return this.checkpoints.reduce((s, c) => s + diskBytes(c.path), 0);
  }

  heartbeat(): TrainHeartbeat {
    const sps = this.stepsPerSec();
    const eta = sps && this.totalSteps ? Math.max(0, ((this.totalSteps - this.step) / sps) * 1000) : null;
    const line = `attempt ${this.attempt} on ${this.workerId}: ${progressLine({ ...this, metrics: this.metrics, etaMs: eta, upload: this.uploadState() }, formatDuration)}`;
    return {
      line,
      attempt: this.attempt,
      step: this.step,
      epoch: this.epoch,
      lastCheckpoint: this.lastCheckpoint(),
      checkpoints: this.checkpoints,
      metrics: rounded(this.metrics),
      gpu: this.gpu,
      workerId: this.workerId,
      upload: this.uploadState(),
      restartedFromScratch: this.restartedFromScratch,
    };
  }

  report(final = false): ProgressReport {
    const sps = this.stepsPerSec();
    return {
      attempt: this.attempt,
      workerId: this.workerId,
      step: this.step,
      totalSteps: this.totalSteps,
      epoch: this.epoch,
      totalEpochs: this.totalEpochs,
      metrics: this.metrics,
      firstStep: this.firstStep,
      resumedFrom: this.resumedFrom,
      lastCheckpoint: this.lastCheckpoint(),
      checkpoints: this.checkpoints,
      checkpointBytes: this.checkpointBytes,
      validation: this.validation,
      gpuIds: this.gpuIds,
      gpu: this.gpu,
      malformedEvents: this.malformed,
      stepsPerSec: sps,
      etaMs: sps && this.totalSteps ? Math.max(0, ((this.totalSteps - this.step) / sps) * 1000) : null,
      lastProgressAt: this.lastProgressAt,
      upload: this.uploadState(),
      restartedFromScratch: this.restartedFromScratch,
      final,
    };
  }

  result(durationMs: number): TrainResult {
    return {
      attempt: this.attempt,
      workerId: this.workerId,
      steps: this.step,
      epochs: this.epoch,
      finalLoss: typeof this.metrics.loss === 'number' ? this.metrics.loss : null,
      metrics: this.metrics,
      validation: this.validation,
      modelPath: this.modelPath,
      lastCheckpoint: this.lastCheckpoint(),
      checkpoints: this.checkpoints,
      gpuIds: this.gpuIds,
      gpu: this.gpu,
      firstStep: this.firstStep,
      resumedFrom: this.resumedFrom,
      durationMs,
    };
  }
}

/** Where progress goes: heartbeats to the server (fast, unbounded), reports to the workflow (history events). */
export class ProgressChannel {
  private lastSignal = 0;

  constructor(
    private readonly ctx: Context,
    private readonly workflow: WorkflowHandle,
    private readonly progress: TrainProgress,
    private readonly log: Logger,
    /** The token the workflow issued to this attempt; a report without it is dropped there. */
    private readonly token?: string,
  ) {}

  heartbeat(): void {
    this.ctx.heartbeat(this.progress.heartbeat());
  }

  /** Signals the report; a lost signal is only logged: the next one carries newer state. */
  async signal(final = false): Promise<void> {
    this.lastSignal = Date.now();
    try {
      await this.workflow.signal(reportSignal, { ...this.progress.report(final), token: this.token });
    } catch (err) {
      this.log.debug({ err: String(err) }, 'progress signal not delivered');
    }
  }

  msSinceSignal(now = Date.now()): number {
    return now - this.lastSignal;
  }
}
