/**
 * What a train attempt knows about its trainer's progress, and the three shapes it leaves in:
 * heartbeat details (TrainHeartbeat, read back by a retry), the report signalled to the workflow
 * (ProgressReport), and the activity's result (TrainResult).
 */
import type { Context } from '@temporalio/activity';
import type { WorkflowHandle } from '@temporalio/client';
import type { Logger } from '../../src/logger';
import { reportSignal } from '../../src/shared/messages';
import { progressLine, readableMetrics, type CheckpointRef, type SkippedCheckpoint, type GpuTelemetry, type ProgressReport, type TrainHeartbeat } from '../../src/shared/progress';
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
  /** Checkpoints given up after failed uploads (shared storage). */
  uploadFailures: () => ProgressReport['uploadFailures'] = () => null;
  /** Set when this attempt found every recorded checkpoint unreachable and started from step 0. */
  restartedFromScratch: ProgressReport['restartedFromScratch'] = null;
  /** Newer checkpoints this attempt did not resume from: changed on disk since they were verified. */
  skippedCheckpoints: SkippedCheckpoint[] = [];
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
    const line = `attempt ${this.attempt} on ${this.workerId}: ${progressLine({ ...this, metrics: this.metrics, etaMs: eta, upload: this.uploadState(), uploadFailures: this.uploadFailures() }, formatDuration)}`;
    return {
      line,
      attempt: this.attempt,
      step: this.step,
      epoch: this.epoch,
      lastCheckpoint: this.lastCheckpoint(),
      checkpoints: this.checkpoints,
      // Metrics as people read them: 4 significant digits (the report to the workflow keeps full precision).
      metrics: readableMetrics(this.metrics),
      gpu: this.gpu,
      workerId: this.workerId,
      upload: this.uploadState(),
      uploadFailures: this.uploadFailures(),
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
      uploadFailures: this.uploadFailures(),
      restartedFromScratch: this.restartedFromScratch,
      ...(this.skippedCheckpoints.length ? { skippedCheckpoints: this.skippedCheckpoints } : {}),
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

/** Reports an attempt may send at once (its first step, its first checkpoints) before the cadence applies. */
export const REPORT_BURST = 10;

/**
 * Where progress goes: heartbeats to the server (fast, unbounded, what `kiln status` and `kiln watch`
 * read), reports to the workflow (each one 4 history events). Reports are coalesced: `offer()` marks
 * that something worth reporting happened (a checkpoint, the first step) and `maybeSignal()` sends
 * the newest state only when the budget allows: a bucket of REPORT_BURST reports, refilled one per
 * `intervalMs` (workers.progressInterval). However fast the trainer checkpoints, an attempt sends
 * at most REPORT_BURST + 1 h / intervalMs reports per hour, plus its final one; a checkpoint reaches
 * the workflow at most `intervalMs` after it was verified (and in the heartbeat at once).
 */
export class ProgressChannel {
  private lastSignal = 0;
  private tokens = REPORT_BURST;
  private refilledAt = Date.now();
  /** Something happened since the last report that the workflow should learn soon. */
  private pending = false;
  /** Reports sent by this attempt (for logs and the bench). */
  sent = 0;

  constructor(
    private readonly ctx: Context,
    private readonly workflow: WorkflowHandle,
    private readonly progress: TrainProgress,
    private readonly log: Logger,
    /** The token the workflow issued to this attempt; a report without it is dropped there. */
    private readonly token?: string,
    private readonly intervalMs = 5000,
  ) {}

  heartbeat(): void {
    this.ctx.heartbeat(this.progress.heartbeat());
  }

  /** Something worth a report happened (a checkpoint, the first step); sent now if the budget allows. */
  offer(now = Date.now()): void {
    this.pending = true;
    this.maybeSignal(now);
  }

  /**
   * Sends a report when one is pending, or when `periodMs` passed since the last (the periodic
   * report), and the budget has a report left. Called on every tick, so a pending report waits at
   * most one refill interval.
   */
  maybeSignal(now = Date.now(), periodMs = Infinity): void {
    const refill = Math.floor((now - this.refilledAt) / this.intervalMs);
    if (refill > 0) {
      this.tokens = Math.min(REPORT_BURST, this.tokens + refill);
      this.refilledAt += refill * this.intervalMs;
    }
    if (this.tokens < 1 || !(this.pending || now - this.lastSignal >= periodMs)) return;
    this.tokens -= 1;
    void this.signal();
  }

  /** Signals the report (the final one bypasses the budget); a lost signal is only logged: the next one carries newer state. */
  async signal(final = false): Promise<void> {
    this.lastSignal = Date.now();
    this.pending = false;
    this.sent += 1;
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
