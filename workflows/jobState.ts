/**
 * What a TrainingJob knows about itself: phase, the latest progress report, checkpoints, pause,
 * approval and cancellation requests, the summary. Its signal and query handlers read and write it;
 * the phase is mirrored to the KilnPhase search attribute and the Current Details line.
 * Not a workflow: workflows/index.ts does not export it.
 */
import { type ActivityInterfaceFor, CancellationScope, setCurrentDetails, setHandler, upsertMemo, upsertSearchAttributes } from '@temporalio/workflow';
import { approveSignal, cancelSignal, pauseSignal, progressQuery, rejectSignal, reportSignal, resumeSignal, statusQuery, type ApprovalInput } from '../src/shared/messages';
import { formatDuration } from '../src/shared/duration';
import { progressLine, type CheckpointRef, type Phase, type ProgressReport } from '../src/shared/progress';
import type { JobProgress, JobSummary, TrainResult } from '../src/shared/summary';
import { kilnSearchAttributes } from '../src/shared/searchAttributes';
import type { ControlActivities } from './activityOptions';

export type Approval = { approved: boolean; by: string; note: string };
export type Registered = JobSummary['registry'];

export class JobState {
  phase: Phase = 'queued';
  latest: ProgressReport | null = null;
  cancelReason: string | null = null;
  pauseRequested = false;
  resumeRequested = false;
  pausedAt: string | null = null;
  approval: Approval | null = null;
  summary: JobSummary | null = null;
  /** The running train attempt, so a pause can cancel it. */
  trainScope: CancellationScope | undefined;
  attempts = 0;
  readonly workers = new Set<string>();
  readonly resumedFromSteps: number[] = [];
  lastCheckpoint: CheckpointRef | null = null;
  checkpoints: CheckpointRef[] = [];
  validation: Record<string, number> = {};
  /** Set once a version exists, so a job cancelled while awaiting approval still reports it. */
  registered: Registered | null = null;
  readonly startedAt = new Date().toISOString();

  constructor(
    readonly jobId: string,
    readonly runId: string,
    readonly model: string,
  ) {}

  line(): string {
    if (this.summary) {
      const r = this.summary.registry;
      const incomplete = r.complete === false ? ` INCOMPLETE (missing ${r.missing_metrics.join(', ')}), not promotable` : '';
      return `${this.summary.outcome}${r.version ? ` · v${r.version} ${r.stage}${incomplete}` : ''}`;
    }
    if (this.phase === 'paused') return `paused at step ${this.lastCheckpoint?.step ?? this.latest?.step ?? 0} (resume with the resume signal)`;
    if (this.latest && this.phase === 'training') return progressLine(this.latest, formatDuration);
    return this.phase;
  }

  setPhase(p: Phase): void {
    this.phase = p;
    upsertSearchAttributes(kilnSearchAttributes({ phase: p }));
    setCurrentDetails(this.line());
  }

  /** The registry's answer to an approval verdict, applied to the registered version. */
  recordVerdict(outcome: { stage: string; decision: string }): void {
    if (this.registered) this.registered = { ...this.registered, stage: outcome.stage, decision: outcome.decision };
  }

  finish(s: JobSummary): void {
    this.summary = s;
    upsertMemo({ summary: s });
    this.setPhase(s.outcome);
  }

  /** Registers every signal and query handler; call before the workflow's first await. */
  listen(control: ActivityInterfaceFor<ControlActivities>): void {
    setHandler(progressQuery, () => this.progress());
    setHandler(statusQuery, () => ({
      jobId: this.jobId,
      model: this.model,
      phase: this.phase,
      step: this.latest?.step ?? 0,
      totalSteps: this.latest?.totalSteps ?? null,
      loss: typeof this.latest?.metrics.loss === 'number' ? this.latest.metrics.loss : null,
      line: this.line(),
    }));
    setHandler(reportSignal, (r) => this.report(r));
    setHandler(cancelSignal, async (arg) => {
      if (this.summary || this.cancelReason !== null) return;
      this.cancelReason = arg?.reason?.trim() || 'cancelled by signal';
      // Turn the signal into a real cancellation request, so both paths end the same way: the run
      // closes as Canceled in the UI and visibility, after the trainer is really gone. The server
      // refuses a workflow's request to cancel itself, so a control activity asks as a client.
      await control.requestCancellation({ workflowId: this.jobId, runId: this.runId, reason: this.cancelReason });
    });
    setHandler(pauseSignal, () => {
      if (this.phase !== 'training' || !this.trainScope) return;
      this.pauseRequested = true;
      this.trainScope.cancel();
    });
    setHandler(resumeSignal, () => {
      this.resumeRequested = true;
    });
    setHandler(approveSignal, (a?: ApprovalInput) => {
      this.approval ??= { approved: true, by: a?.by ?? 'unknown', note: a?.note ?? '' };
    });
    setHandler(rejectSignal, (a?: ApprovalInput) => {
      this.approval ??= { approved: false, by: a?.by ?? 'unknown', note: a?.note ?? '' };
    });
  }

  private report(r: ProgressReport): void {
    // Reports from an attempt the workflow no longer waits for (a late signal) must not move progress back.
    if (this.latest && r.attempt < this.latest.attempt) return;
    this.latest = r;
    this.workers.add(r.workerId);
    if (r.lastCheckpoint) this.lastCheckpoint = r.lastCheckpoint;
    this.checkpoints = r.checkpoints;
    if (Object.keys(r.validation).length) this.validation = { ...this.validation, ...r.validation };
    if (this.phase === 'training') setCurrentDetails(this.line());
  }

  progress(): JobProgress {
    const latest = this.latest;
    return {
      jobId: this.jobId,
      model: this.model,
      phase: this.phase,
      attempt: latest?.attempt ?? this.attempts,
      workerId: latest?.workerId ?? null,
      step: latest?.step ?? 0,
      totalSteps: latest?.totalSteps ?? null,
      epoch: latest?.epoch ?? null,
      totalEpochs: latest?.totalEpochs ?? null,
      metrics: latest?.metrics ?? {},
      validation: this.validation,
      etaMs: latest?.etaMs ?? null,
      stepsPerSec: latest?.stepsPerSec ?? null,
      lastCheckpoint: this.lastCheckpoint,
      checkpoints: this.checkpoints.length,
      checkpointBytes: latest?.checkpointBytes ?? 0,
      gpuIds: latest?.gpuIds ?? [],
      gpu: latest?.gpu ?? null,
      malformedEvents: latest?.malformedEvents ?? 0,
      lastProgressAt: latest?.lastProgressAt ?? null,
      pausedAt: this.pausedAt,
      cancelReason: this.cancelReason,
      line: this.line(),
      summary: this.summary,
    };
  }

  buildSummary(outcome: JobSummary['outcome'], train: TrainResult | null, reg: Registered | null, failure: string | null): JobSummary {
    const latest = this.latest;
    return {
      jobId: this.jobId,
      model: this.model,
      outcome,
      training_metrics: {
        final_loss: train?.finalLoss ?? (typeof latest?.metrics.loss === 'number' ? latest.metrics.loss : null),
        epochs: train?.epochs ?? latest?.epoch ?? null,
        steps: train?.steps ?? latest?.step ?? 0,
        duration_ms: Date.now() - Date.parse(this.startedAt),
      },
      validation_metrics: this.validation,
      resource_usage: { gpu_ids: train?.gpuIds ?? latest?.gpuIds ?? [], gpu: train?.gpu ?? latest?.gpu ?? null },
      artifacts: { model_path: train?.modelPath ?? null, checkpoints: train?.checkpoints ?? this.checkpoints, last_checkpoint: train?.lastCheckpoint ?? this.lastCheckpoint },
      registry: reg ?? { version: null, stage: null, complete: null, missing_metrics: [], decision: null },
      session_info: {
        attempts: this.attempts,
        workers: [...this.workers],
        started_at: this.startedAt,
        ended_at: new Date().toISOString(),
        cancellation_reason: this.cancelReason,
        failure,
        resumed_from_steps: this.resumedFromSteps,
        resume: train?.resumedFrom ? { from_step: train.resumedFrom.step, first_step: train.firstStep } : null,
      },
    };
  }
}
