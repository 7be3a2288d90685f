/**
 * What a TrainingJob knows about itself: phase, the latest progress report, checkpoints, pause,
 * approval and cancellation requests, the summary. Its signal, update and query handlers read and
 * write it; the phase is mirrored to the KilnPhase search attribute and the Current Details line.
 *
 * Every message is untrusted (the Temporal CLI and Web UI can send anything): each handler parses its
 * payload and judges it with the one rule in src/shared/control.ts. A refused Update is rejected by
 * its validator before anything is recorded; a refused or malformed Signal is logged, counted
 * (`ignoredMessages` in the progress query, `kiln status`) and dropped. No handler throws.
 * Not a workflow: workflows/index.ts does not export it.
 */
import type { SignalDefinition, UpdateDefinition } from '@temporalio/common';
import { type ActivityInterfaceFor, ApplicationFailure, CancellationScope, log, setCurrentDetails, setDefaultSignalHandler, setHandler, upsertMemo, upsertSearchAttributes } from '@temporalio/workflow';
import {
  approveSignal,
  approveUpdate,
  cancelSignal,
  cancelUpdate,
  pauseSignal,
  pauseUpdate,
  progressQuery,
  rejectSignal,
  rejectUpdate,
  reportSignal,
  resumeSignal,
  resumeUpdate,
  statusQuery,
} from '../src/shared/messages';
import {
  ApprovalInputSchema,
  CancelInputSchema,
  controlRefusal,
  parseControlInput,
  PauseInputSchema,
  type ControlAction,
  type ControlResult,
  type ControlState,
  type Refusal,
  CONTROL_REFUSED,
} from '../src/shared/control';
import { formatDuration } from '../src/shared/duration';
import { formatIssues } from '../src/shared/params';
import { CheckpointSuspects } from './suspects';
import { CheckpointRefSchema, progressLine, ProgressReportSchema, type CheckpointRef, type Phase, type ProgressReport, type SkippedCheckpoint } from '../src/shared/progress';
import { endReason, readableSummary, type AttemptRecord, type JobProgress, type JobSummary, type OlderAttempts } from '../src/shared/summary';
import type { RetryRecord } from '../src/shared/retry';
import { endAttempt } from './attempts';
import { kilnSearchAttributes } from '../src/shared/searchAttributes';
import type { ControlActivities } from './activityOptions';

export type Approval = { approved: boolean; by: string; note: string };
type Effect = Pick<ControlResult, 'phase' | 'message'>;
type Judged<V> = { ok: true; value: V } | { ok: false; refusal: Refusal };
export type Registered = JobSummary['registry'];

export class JobState {
  phase: Phase = 'queued';
  latest: ProgressReport | null = null;
  cancelReason: string | null = null;
  /** Who asked for the cancellation: `kiln cancel, ann@host`, `the cancel signal`, `temporal workflow cancel`. */
  cancelledBy: string | null = null;
  /** The Current Details line a phase was entered with (queued: what it waits for). */
  phaseDetails: string | null = null;
  /** The token of the attempt that is queued: its first report moves the job to training. */
  queuedToken: string | null = null;
  /** Whether this run has the queued phase (workflows/queue.ts); false when replaying an older run. */
  queuedPhase = true;
  /** Desired state: paused from an accepted pause until an accepted resume, whatever their timing. */
  paused = false;
  /** The train attempt cancelled by a pause (so its cancellation is not the job's). */
  pauseScope: CancellationScope | undefined;
  /** Accepted control actions so far; an Update's answer carries its number. */
  controlSeq = 0;
  /** The running train activity's report token; reports without it are dropped. */
  reportToken: string | null = null;
  ignoredMessages = 0;
  lastIgnored: string | null = null;
  pausedAt: string | null = null;
  approval: Approval | null = null;
  summary: JobSummary | null = null;
  /** The running train attempt, so a pause can cancel it. */
  trainScope: CancellationScope | undefined;
  attempts = 0;
  interruptions = 0;
  readonly attemptLog: AttemptRecord[] = [];
  readonly workers = new Set<string>();
  readonly resumedFromSteps: number[] = [];
  lastCheckpoint: CheckpointRef | null = null;
  checkpoints: CheckpointRef[] = [];
  validation: Record<string, number> = {};
  /** An attempt that found every checkpoint unreachable and trained from step 0. */
  restartedFromScratch: { attempt: number; stepsLost: number; reason: string } | null = null;
  /** Checkpoints an attempt stepped over because they changed on disk after they were verified. */
  skippedCheckpoints: (SkippedCheckpoint & { attempt: number })[] = [];
  /** Checkpoints attempts failed on right after resuming: suspect once, quarantined twice. */
  suspects = new CheckpointSuspects();
  /** Set once a version exists, so a job cancelled while awaiting approval still reports it. */
  registered: Registered | null = null;
  /** Each `kiln retry` of the job (workflows/retry.ts), and the attempts folded out of attemptLog (continueAsNew.ts). */
  retries: RetryRecord[] = [];
  olderAttempts: OlderAttempts | null = null;
  /** The job's folder (PreparedJob.workDir) once prepared: summary paths are relative to it. */
  workDir: string | null = null;
  /** When the job (its first run) started; carried across continue-as-new. */
  startedAt = new Date().toISOString();

  constructor(
    readonly jobId: string,
    readonly runId: string,
    readonly model: string,
  ) {}

  line(): string {
    if (this.summary) {
      const r = this.summary.registry;
      const incomplete = r.complete === false ? ` INCOMPLETE (missing ${r.missing_metrics.join(', ')}), not promotable` : '';
      const why = this.summary.outcome === 'completed' ? 'completed' : (this.summary.session_info.end_reason ?? this.summary.outcome);
      const last = this.retries.at(-1);
      const retried = last ? ` · retried ${this.retries.length === 1 ? 'once' : `${this.retries.length} times`}, last by ${last.by} from step ${last.from_step}` : '';
      return `${why}${r.version ? ` · v${r.version} ${r.stage}${incomplete}` : ''}${retried}`;
    }
    if (this.phase === 'queued' && this.phaseDetails) return this.phaseDetails;
    if (this.phase === 'paused') return `paused at step ${this.lastCheckpoint?.step ?? this.latest?.step ?? 0} (resume with the resume signal)`;
    if (this.latest && this.phase === 'training') return progressLine(this.latest, formatDuration);
    return this.phase;
  }

  /** Moves to a phase; `details` replaces the Current Details line until the next report. */
  setPhase(p: Phase, details?: string): void {
    this.phase = p;
    this.phaseDetails = details ?? null;
    upsertSearchAttributes(kilnSearchAttributes({ phase: p }));
    setCurrentDetails(details ?? this.line());
  }

  /**
   * What a lost attempt's last heartbeat knew (it may have checkpointed after its last report): its
   * newest checkpoint, and the worker it ran on.
   */
  learnFromHeartbeat(rec: AttemptRecord, details: unknown): void {
    const hb = details as { lastCheckpoint?: unknown; workerId?: unknown; step?: unknown } | null;
    const cp = CheckpointRefSchema.safeParse(hb?.lastCheckpoint);
    if (cp.success && cp.data.step > (this.lastCheckpoint?.step ?? -1)) this.lastCheckpoint = cp.data;
    if (typeof hb?.workerId === 'string') rec.worker ??= hb.workerId.slice(0, 512);
    if (typeof hb?.step === 'number' && Number.isFinite(hb.step)) rec.last_step = Math.max(rec.last_step ?? 0, hb.step);
  }

  /** The checkpoints the job knows of, for the next attempt (which may run on another host). */
  recorded(): { checkpoints: CheckpointRef[]; step: number; workerId: string | null } {
    const cps = this.lastCheckpoint && !this.checkpoints.some((c) => c.path === this.lastCheckpoint!.path) ? [...this.checkpoints, this.lastCheckpoint] : this.checkpoints;
    return { checkpoints: cps, step: this.latest?.step ?? 0, workerId: this.latest?.workerId ?? null };
  }

  /** Opens the record of a new train attempt. */
  beginAttempt(): AttemptRecord {
    this.attempts += 1;
    const rec: AttemptRecord = {
      n: this.attempts,
      worker: null,
      started_at: new Date().toISOString(),
      ended_at: null,
      outcome: 'running',
      cause: null,
      resume_step: this.lastCheckpoint?.step ?? 0,
      last_step: null,
      steps_lost: null,
    };
    this.attemptLog.push(rec);
    return rec;
  }

  /** Closes an attempt's record with what its reports showed: worker, last step, steps lost. */
  endAttempt(rec: AttemptRecord, outcome: AttemptRecord['outcome'], cause: string | null, lastStep?: number): void {
    const mine = this.latest && this.latest.attempt === rec.n ? this.latest : null;
    rec.worker = mine?.workerId ?? rec.worker;
    // The attempt chose its own resume point (the newest checkpoint in the job's manifest).
    if (mine?.resumedFrom) rec.resume_step = mine.resumedFrom.step;
    endAttempt(rec, outcome, cause, lastStep ?? mine?.step ?? null, outcome === 'completed' ? (lastStep ?? 0) : (this.lastCheckpoint?.step ?? 0));
  }

  /** The registry's answer to an approval verdict, applied to the registered version. */
  recordVerdict(outcome: { stage: string; decision: string }): void {
    if (this.registered) this.registered = { ...this.registered, stage: outcome.stage, decision: outcome.decision };
  }

  /** Ends the job with its summary, in the readable form the memo and the result carry (returned). */
  finish(s: JobSummary): JobSummary {
    s.session_info.end_reason = endReason(s, this.cancelledBy);
    this.summary = readableSummary(s, this.workDir);
    upsertMemo({ summary: this.summary });
    this.setPhase(s.outcome);
    return this.summary;
  }

  /** Registers every signal, update and query handler; call before the workflow's first await. */
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
    setHandler(reportSignal, (raw: unknown) => this.report(raw));
    this.control('cancel', cancelSignal, cancelUpdate, (raw) => parseControlInput(CancelInputSchema, raw, 'cancel'), async (v, via) => {
      const reason = v.reason || `cancelled by ${via}`;
      this.cancelReason = reason;
      const channel = via === 'update' ? 'the cancel update' : 'the cancel signal';
      // `kiln cancel` names itself in `by` (`kiln cancel, ann`); anything else is named by how it came.
      this.cancelledBy = v.by ? (v.by.startsWith('kiln ') ? v.by : `${channel} from ${v.by}`) : channel;
      // Visible in the Web UI while the trainer checkpoints and stops, and kept there once the run is Canceled.
      setCurrentDetails(`cancelling: ${reason} (by ${this.cancelledBy})`);
      // Turn the request into a real cancellation, so every path ends the same way: the run closes as
      // Canceled in the UI and visibility, after the trainer is really gone. The server refuses a
      // workflow's request to cancel itself, so a control activity asks as a client. Non-cancellable:
      // the cancellation it causes must not abort the call that asked for it.
      await CancellationScope.nonCancellable(() => control.requestCancellation({ workflowId: this.jobId, runId: this.runId, reason }));
      return { phase: 'cancelled', message: `cancelling: ${reason} (the trainer checkpoints and stops)` };
    });
    this.control('pause', pauseSignal, pauseUpdate, (raw) => parseControlInput(PauseInputSchema, raw, 'pause'), () => {
      this.paused = true;
      if (this.trainScope) {
        this.pauseScope = this.trainScope;
        this.trainScope.cancel();
      }
      return { phase: 'paused', message: 'pausing: the trainer checkpoints and frees its GPU; resume with resume' };
    });
    this.control('resume', resumeSignal, resumeUpdate, (raw) => parseControlInput(PauseInputSchema, raw, 'resume'), () => {
      this.paused = false;
      return { phase: 'training', message: `resuming from step ${this.lastCheckpoint?.step ?? 0}` };
    });
    for (const [action, signal, update] of [
      ['approve', approveSignal, approveUpdate],
      ['reject', rejectSignal, rejectUpdate],
    ] as const) {
      this.control(action, signal, update, (raw) => parseControlInput(ApprovalInputSchema, raw, action), (v) => {
        this.approval = { approved: action === 'approve', by: v.by || 'unknown', note: v.note ?? '' };
        return { phase: 'registering', message: `${action === 'approve' ? 'approved' : 'rejected'} by ${this.approval.by}${this.approval.note ? `: ${this.approval.note}` : ''}` };
      });
    }
    setDefaultSignalHandler((name) => this.ignore(`signal "${name}": no such signal (known: cancel, pause, resume, approve, reject)`));
  }

  controlState(): ControlState {
    const a = this.approval;
    return {
      phase: this.phase,
      paused: this.paused,
      cancelRequested: this.cancelReason,
      approvalPending: this.phase === 'awaiting-approval',
      approvalDecided: a ? `${a.approved ? 'approved' : 'rejected'} by ${a.by}` : null,
    };
  }

  /**
   * One implementation per action, behind a Signal (which cannot answer: a refusal is logged and
   * dropped) and an Update of the same name (whose validator refuses before anything is recorded).
   */
  private control<I, V>(
    action: ControlAction,
    signal: SignalDefinition<[I?]>,
    update: UpdateDefinition<ControlResult, [I?]>,
    parse: (raw: unknown) => { ok: true; value: V } | { ok: false; error: string },
    apply: (v: V, via: 'signal' | 'update') => Effect | Promise<Effect>,
  ): void {
    const judge = (raw: unknown): Judged<V> => {
      const p = parse(raw);
      if (!p.ok) return { ok: false, refusal: { code: 'INVALID_INPUT', message: p.error } };
      const refusal = controlRefusal(action, this.controlState());
      return refusal ? { ok: false, refusal } : p;
    };
    const refuse = (r: Refusal): never => {
      throw ApplicationFailure.nonRetryable(`${action} refused: ${r.message}`, CONTROL_REFUSED, r);
    };
    const run = async (v: V, via: 'signal' | 'update'): Promise<ControlResult> => {
      const seq = ++this.controlSeq;
      const e = await apply(v, via);
      log.info(`${this.jobId}: ${action} accepted (${via}, #${seq}): ${e.message}`);
      return { action, accepted: true, seq, ...e };
    };
    setHandler(signal, async (raw?: I) => {
      const p = judge(raw);
      if (!p.ok) return this.ignore(`${action} signal: ${action} refused: ${p.refusal.message}`);
      await run(p.value, 'signal').catch((err: unknown) => this.ignore(`${action} signal failed: ${String(err)}`));
    });
    setHandler(update, (raw?: I) => {
      const p = judge(raw);
      // The validator already refused anything judge() refuses; this only narrows the type.
      return p.ok ? run(p.value, 'update') : refuse(p.refusal);
    }, {
      validator: (raw?: I) => {
        const p = judge(raw);
        if (!p.ok) refuse(p.refusal);
      },
    });
  }

  /** A message that changes nothing: logged and counted, never thrown out of a handler. */
  private ignore(why: string): void {
    this.ignoredMessages += 1;
    this.lastIgnored = why.slice(0, 500);
    log.warn(`${this.jobId}: ignored ${this.lastIgnored}`);
  }

  private report(raw: unknown): void {
    const parsed = ProgressReportSchema.safeParse(raw);
    if (!parsed.success) return this.ignore(`kiln.report: not a progress report (${formatIssues('report', parsed.error).slice(0, 3).join('; ')})`);
    const r = parsed.data;
    // Only the running attempt holds the token; a forged report or one from a superseded attempt has not.
    if (this.reportToken === null || r.token !== this.reportToken) return this.ignore('kiln.report: not from the running train attempt (wrong or missing token)');
    // Reports from an attempt the workflow no longer waits for (a late signal) must not move progress back.
    if (this.latest && r.attempt < this.latest.attempt) return;
    this.latest = r;
    this.workers.add(r.workerId);
    if (r.lastCheckpoint) this.lastCheckpoint = r.lastCheckpoint;
    this.checkpoints = r.checkpoints;
    if (r.restartedFromScratch) {
      // The checkpoints recorded before are gone: the resume point is this attempt's own.
      this.restartedFromScratch = { attempt: r.attempt, ...r.restartedFromScratch };
      this.lastCheckpoint = r.lastCheckpoint;
    }
    for (const k of r.skippedCheckpoints ?? []) {
      if (this.skippedCheckpoints.some((s) => s.path === k.path)) continue;
      // Bounded: a job cannot grow its state without limit from reports.
      if (this.skippedCheckpoints.length < 100) this.skippedCheckpoints.push({ attempt: r.attempt, ...k });
      log.warn(`${this.jobId}: attempt ${r.attempt} did not resume from checkpoint step ${k.step} (${k.path}): ${k.problem}`);
    }
    if (Object.keys(r.validation).length) this.validation = { ...this.validation, ...r.validation };
    // The first report of the running attempt: its trainer runs, the wait for a slot is over.
    if (this.phase === 'queued' && r.token === this.queuedToken) {
      this.queuedToken = null;
      this.setPhase('training');
    } else if (this.phase === 'training' && !this.cancelReason) setCurrentDetails(this.line());
  }

  progress(): JobProgress {
    const latest = this.latest;
    return {
      jobId: this.jobId,
      model: this.model,
      phase: this.phase,
      attempt: latest?.attempt ?? this.attempts,
      // A paused job runs nowhere: it names no worker until an attempt reports again.
      workerId: this.phase === 'paused' || this.phase === 'queued' ? null : (latest?.workerId ?? null),
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
      ignoredMessages: this.ignoredMessages,
      lastIgnored: this.lastIgnored,
      restartedFromScratch: this.restartedFromScratch,
      skippedCheckpoints: this.skippedCheckpoints,
      suspectCheckpoints: this.suspects.list,
      line: this.line(),
      attemptLog: this.attemptLog,
      olderAttempts: this.olderAttempts,
      retries: this.retries,
      summary: this.summary,
    };
  }
}
