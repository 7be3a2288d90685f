/**
 * The loop that supervises one trainer: start it under the shim with the KILN_* environment, heartbeat
 * at least every tick, kill it when it stalls, when the attempt is cancelled or superseded, and turn how
 * it ended into the activity's result or failure.
 */
import * as fs from 'node:fs';
import type { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { ErrorType } from '../../src/shared/errors';
import type { TrainResult } from '../../src/shared/summary';
import { readPidfile } from '../../src/supervisor/pidfiles';
import { CANNOT_START } from '../../src/supervisor/exitCodes';
import { describeExit, ExitCode, logTail, trainerEnv } from '../../src/supervisor/protocol';
import { startTrainer, type TrainerHandle } from '../../src/supervisor/trainer';
import { attemptHeader, leaseFile, trainerLogFile } from '../../src/supervisor/workdir';
import type { GpuDeps } from '../deps';
import type { TrainAttempt } from './attempt';
import { trainerEventHandler, type TrainerEvents } from './events';
import { jobIoFailure } from './ioError';
import type { ProgressChannel, TrainProgress } from './progress';
import type { CheckpointUploader } from './upload';

/** Heartbeat, stall and fence checks run this often; a cancel arrives within about a second. */
const TICK_MS = 250;
const GPU_SAMPLE_MS = 5000;
/** Lines of trainer.log quoted in a failure. */
const TAIL_LINES = 50;
const TAIL_BYTES = 64 * 1024;

type StopReason = 'cancel' | 'stall' | 'superseded' | 'io';

/** Why this attempt stopped its trainer, if it did; the first reason wins. */
class TrainerStop {
  reason: StopReason | null = null;
  cancelErr: unknown = null;
  ioErr: unknown = null;
  constructor(
    private readonly trainer: TrainerHandle,
    private readonly a: TrainAttempt,
  ) {}

  /** A disk error while handling the job's events: this attempt fails, the worker does not. */
  failed(err: unknown): void {
    if (this.reason) return;
    this.ioErr = err;
    this.a.log.error({ err: String(err), code: (err as NodeJS.ErrnoException).code, path: (err as NodeJS.ErrnoException).path }, 'cannot handle the trainer event: failing this attempt');
    this.request('io');
  }

  request(why: StopReason): void {
    if (this.reason) return;
    this.reason = why;
    this.a.log.info({ why }, 'stopping trainer');
    void this.trainer.stop(this.a.p.timeouts.cancelGraceMs);
  }
}

export interface TrainRun {
  gpuIds: string[];
  leaseOwner: string;
  progress: TrainProgress;
  channel: ProgressChannel;
  /** Shared storage: checkpoints upload in the background and are verified once stored. */
  uploader?: CheckpointUploader | null;
  /** Where the uploader sends a disk error while recording a verified checkpoint. */
  errors?: { onError: (err: unknown) => void };
}

export async function superviseTrainer(deps: GpuDeps, ctx: Context, a: TrainAttempt, run: TrainRun): Promise<TrainResult> {
  const { p, log, workDir, resumedFrom } = a;
  const { progress } = run;
  const logFile = trainerLogFile(workDir);
  const env = trainerEnv({ mode: 'train', jobId: a.jobId, attempt: a.attempt, params: p.params, workDir, resumeFrom: resumedFrom?.path ?? '', gpuIds: run.gpuIds, trainerEnv: a.trainer.env });
  log.info({ resumeFrom: resumedFrom?.path ?? null, gpuIds: run.gpuIds }, 'starting trainer');
  let stop: TrainerStop | null = null;
  let trainer: TrainerHandle;
  const events = trainerEventHandler(deps, a, progress, run.channel, { uploader: run.uploader, onError: (err) => stop?.failed(err) });
  try {
    fs.appendFileSync(logFile, attemptHeader({ attempt: a.attempt, workerId: a.workerId, resumedFrom, gpuIds: run.gpuIds }));
    trainer = startTrainer({
      argv: deps.trainerArgv(a.trainer.command),
      env,
      cwd: workDir,
      logFile,
      pidfile: a.pidfile,
      graceMs: p.timeouts.cancelGraceMs,
      heartbeatMs: p.timeouts.heartbeatMs,
      logCap: deps.config.workers.trainerLog,
      journal: { file: a.journal, leaseFile: leaseFile(workDir), leaseToken: a.lease.token },
      record: { jobId: a.jobId, attempt: a.attempt, taskToken: ctx.info.base64TaskToken ?? null },
      onEvent: events.onEvent,
      onMalformed: (line, why) => {
        progress.malformed += 1;
        if (progress.malformed <= 20 || progress.malformed % 1000 === 0) log.warn({ why, line: line.slice(0, 200), count: progress.malformed }, 'malformed trainer event ignored');
      },
      onError: (err) => stop?.failed(err),
    });
  } catch (err) {
    deps.gpus.release(run.leaseOwner);
    deps.metrics.jobEnded(p.spec.pool, a.jobId);
    throw jobIoFailure(a.jobId, err, logFile);
  }
  deps.onTrainerStarted?.(a.jobId, a.attempt);

  stop = new TrainerStop(trainer, a);
  const stopper = stop;
  if (run.errors) run.errors.onError = (err) => stopper.failed(err);
  ctx.cancelled.catch((err) => {
    stopper.cancelErr = err;
    deps.metrics.cancelled(p.spec.pool);
    stopper.request('cancel');
  });
  const check = tick(deps, a, run, stopper);
  const ticker = setInterval(() => {
    try {
      check();
    } catch (err) {
      stopper.failed(err);
    }
  }, TICK_MS);

  let code: number;
  try {
    code = await trainer.exited;
  } finally {
    clearInterval(ticker);
    deps.gpus.release(run.leaseOwner);
    deps.metrics.jobEnded(p.spec.pool, a.jobId);
    // The shim removes the pidfile when the trainer exits; make sure of it on every path, but never
    // remove a newer attempt's record (it is how that attempt's trainer gets found and killed).
    if (readPidfile(a.pidfile)?.shimPid === trainer.child.pid) fs.rmSync(a.pidfile, { force: true });
  }
  if (stopper.reason !== 'superseded') await settleVerifications(run, events);
  if (run.uploader && stopper.reason !== 'superseded') await drainUploads(a, run);
  run.channel.heartbeat();
  return outcome(a, run, stopper, code, logTail(logFile, TAIL_LINES, TAIL_BYTES));
}

/** After the trainer exited: the local checkpoints still being hashed are verified first, heartbeating. */
async function settleVerifications(run: TrainRun, events: TrainerEvents): Promise<void> {
  const beat = setInterval(() => run.channel.heartbeat(), TICK_MS);
  try {
    await events.settled();
  } finally {
    clearInterval(beat);
  }
}

/** After the trainer exited: the checkpoints still uploading become verified (or are given up) first, heartbeating. */
async function drainUploads(a: TrainAttempt, run: TrainRun): Promise<void> {
  const pending = run.uploader!.state;
  if (!pending) return;
  a.log.info({ step: pending.step, queued: pending.queued }, 'trainer exited; waiting for its checkpoints to finish uploading');
  const beat = setInterval(() => run.channel.heartbeat(), TICK_MS);
  try {
    await run.uploader!.drain();
  } finally {
    clearInterval(beat);
  }
}

/** One tick: heartbeat, stall and fence checks, GPU telemetry, and a progress signal when one is due. */
function tick(deps: GpuDeps, a: TrainAttempt, run: TrainRun, stop: TrainerStop): () => void {
  const { p, log } = a;
  const { progress, channel } = run;
  let lastGpuSample = 0;
  return () => {
    channel.heartbeat();
    const now = Date.now();
    if (!stop.reason && now - progress.lastAdvance > p.timeouts.stallMs) {
      log.warn({ stallMs: p.timeouts.stallMs, step: progress.step }, 'trainer stalled: step has not advanced');
      deps.metrics.stalled(p.spec.pool);
      stop.request('stall');
    }
    if (!stop.reason && a.lease.superseded()) {
      log.warn('a newer attempt owns this job; stopping this attempt');
      stop.request('superseded');
    }
    deps.metrics.sinceProgress(a.jobId, (now - progress.lastAdvance) / 1000);
    if (now - lastGpuSample > GPU_SAMPLE_MS && run.gpuIds.length) {
      lastGpuSample = now;
      void deps.sampleGpus(run.gpuIds).then((g) => {
        progress.gpu = g;
      });
    }
    // Reports become history events: a pending one (a checkpoint) goes out when the channel's budget
    // allows, a periodic one when its interval passed (growing with the attempt's age: ~3 min after
    // 10 h). Heartbeats (every tick) keep the fast, unbounded view for `kiln status`.
    channel.maybeSignal(now, Math.max(p.progressIntervalMs, (now - a.t0) / 200));
  };
}

/** How the trainer ended, as the activity's result or a classified failure. */
async function outcome(a: TrainAttempt, run: TrainRun, stop: TrainerStop, code: number, tail: string): Promise<TrainResult> {
  const { p, log, attempt, jobId } = a;
  const { progress, channel } = run;
  if (stop.reason === 'cancel') {
    await channel.signal(true);
    log.info({ code, lastCheckpoint: progress.lastCheckpoint()?.path ?? null }, 'trainer stopped after cancellation');
    throw stop.cancelErr instanceof CancelledFailure ? stop.cancelErr : new CancelledFailure('cancelled');
  }
  // Every other ending reports first (its checkpoints and resume point), so the workflow judges the
  // attempt on what it really did; a superseded attempt reports nothing.
  if (stop.reason !== 'superseded') await channel.signal(true);
  if (stop.reason === 'stall') {
    throw ApplicationFailure.retryable(`trainer made no progress for ${p.timeouts.stallMs} ms at step ${progress.step}; killed it`, ErrorType.TrainerStalled, { step: progress.step, logTail: tail });
  }
  if (stop.reason === 'superseded') {
    throw ApplicationFailure.retryable(`attempt ${attempt} was superseded by a newer attempt of ${jobId}`, ErrorType.AttemptSuperseded);
  }
  if (stop.reason === 'io') throw jobIoFailure(jobId, stop.ioErr);
  if (code === ExitCode.workerLost) {
    throw ApplicationFailure.retryable(`the shim stopped the trainer of attempt ${attempt}: this worker did not ping it for ${p.timeouts.heartbeatMs} ms (frozen or blocked)`, ErrorType.WorkerLost, { step: progress.step });
  }
  if (code === ExitCode.invalidInput) {
    throw ApplicationFailure.nonRetryable(`trainer rejected its params (exit 2):\n${tail}`, ErrorType.InvalidParams, { exitCode: code, logTail: tail });
  }
  const cannotStart = code === ExitCode.cannotStart ? tail.split('\n').find((l) => l.startsWith(`kiln shim: ${CANNOT_START}`)) : undefined;
  if (cannotStart) {
    throw ApplicationFailure.nonRetryable(`trainer not found: ${cannotStart.slice('kiln shim: '.length)} (trainers.${p.spec.trainer}.command; kiln config check names every broken command)`, ErrorType.TrainerNotFound, { exitCode: code, logTail: tail });
  }
  if (code !== ExitCode.ok) {
    throw ApplicationFailure.retryable(`trainer ${describeExit(code)} at step ${progress.step}:\n${tail}`, ErrorType.TrainerFailed, { exitCode: code, step: progress.step, logTail: tail, resumedFrom: progress.resumedFrom, firstStep: progress.firstStep });
  }
  return progress.result(Date.now() - a.t0);
}
