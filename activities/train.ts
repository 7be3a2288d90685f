/**
 * The `train` activity: runs one attempt of a training job on a GPU worker, supervising the trainer.
 *
 * - resumes from the newest verified checkpoint (heartbeat details, the job's manifest, or the pause
 *   checkpoint), falling back to the previous one when the newest is missing;
 * - heartbeats on every event and at least twice a second, so a dead worker is noticed by the
 *   heartbeat timeout and a cancel arrives within about a second;
 * - kills a hung trainer (step not advancing for the stall timeout) and fails with TrainerStalled;
 * - fences stale attempts: a newer attempt's lease file makes an old one kill its trainer and stop;
 * - keeps the latest N + best K + pinned checkpoints.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { ErrorType } from '../src/shared/errors';
import type { CheckpointRef, GpuTelemetry, ProgressReport, TrainHeartbeat } from '../src/shared/progress';
import type { PreparedJob } from '../src/shared/spec';
import type { TrainResult } from '../src/shared/summary';
import { pidfileFor, readPidfile, killRecordedTrainer } from '../src/supervisor/pidfiles';
import { diskBytes, selectKept } from '../src/supervisor/retention';
import { startTrainer, type TrainerEvent } from '../src/supervisor/trainer';
import type { GpuDeps } from './deps';

export interface TrainInput {
  prepared: PreparedJob;
  /** Checkpoint to resume from after a pause (retries use heartbeat details instead). */
  resumeFrom: CheckpointRef | null;
  runId: string;
}


const TICK_MS = 250;

/** True if `p` resolves inside `dir` (after symlinks), so a trainer cannot point Kiln outside the job. */
export function insideDir(dir: string, p: string): boolean {
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch {
    real = path.resolve(p);
  }
  let base: string;
  try {
    base = fs.realpathSync(dir);
  } catch {
    base = path.resolve(dir);
  }
  const rel = path.relative(base, real);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function manifestPath(workDir: string): string {
  return path.join(workDir, 'checkpoints.json');
}

function readManifest(workDir: string): CheckpointRef[] {
  try {
    const m = JSON.parse(fs.readFileSync(manifestPath(workDir), 'utf8')) as { checkpoints: CheckpointRef[] };
    return Array.isArray(m.checkpoints) ? m.checkpoints : [];
  } catch {
    return [];
  }
}

function writeManifest(workDir: string, checkpoints: CheckpointRef[]): void {
  const tmp = `${manifestPath(workDir)}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ checkpoints }, null, 1));
  fs.renameSync(tmp, manifestPath(workDir));
}

function leasePath(workDir: string): string {
  return path.join(workDir, 'lease.json');
}

/**
 * The work dir's owner: the newest attempt that started. `gen` orders attempts across retries, pause →
 * resume (a new activity, whose attempt count restarts at 1) and workflow runs.
 */
interface Lease {
  token: string;
  gen: number;
  attempt: number;
  workerId: string;
  at: string;
}

/** When the server scheduled this attempt: later for every retry, every resume and every new run. */
function generationOf(info: Context['info']): number {
  return info.currentAttemptScheduledTimestampMs || info.scheduledTimestampMs || Date.now();
}

function readLease(workDir: string): Lease | null {
  try {
    const l = JSON.parse(fs.readFileSync(leasePath(workDir), 'utf8')) as Partial<Lease>;
    return typeof l.token === 'string' ? { token: l.token, gen: Number(l.gen) || 0, attempt: Number(l.attempt) || 0, workerId: String(l.workerId ?? '?'), at: String(l.at ?? '') } : null;
  } catch {
    return null;
  }
}

function writeLease(workDir: string, l: Lease): void {
  const tmp = `${leasePath(workDir)}.${process.pid}.${l.token.slice(0, 8)}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(l));
  fs.renameSync(tmp, leasePath(workDir));
}

/**
 * Takeover cleanup: checkpoints an earlier attempt wrote but never got to announce (its worker died or
 * froze before handling the event, or the write was torn) are not resumable, and retention never saw
 * them. Only entries named like an announced checkpoint (digits aside) or its temp file are removed,
 * so other files a trainer keeps in the checkpoint dir (e.g. TensorBoard runs/) stay.
 */
function sweepUnannounced(ckptDir: string, known: CheckpointRef[], keep: (p: string) => boolean): string[] {
  const esc = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const shapes = new Set<string>();
  const knownPaths = new Set(known.map((c) => path.resolve(c.path)));
  for (const c of known) {
    if (path.dirname(path.resolve(c.path)) === path.resolve(ckptDir)) shapes.add(esc(path.basename(c.path)).replace(/\d+/g, '\\d+'));
  }
  if (shapes.size === 0) return [];
  const re = new RegExp(`^\\.?(?:${[...shapes].join('|')})(?:\\.tmp.*)?$`);
  const removed: string[] = [];
  let names: string[] = [];
  try {
    names = fs.readdirSync(ckptDir);
  } catch {
    return [];
  }
  for (const n of names) {
    const full = path.join(ckptDir, n);
    if (!re.test(n) || knownPaths.has(full) || keep(full)) continue;
    fs.rmSync(full, { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

function logTail(file: string, lines = 50): string {
  try {
    const fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, 64 * 1024);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    fs.closeSync(fd);
    return buf.toString('utf8').split('\n').slice(-lines - 1).join('\n').trim();
  } catch {
    return '';
  }
}

export function createTrain(deps: GpuDeps) {
  return async function train(input: TrainInput): Promise<TrainResult> {
    const ctx = Context.current();
    const info = ctx.info;
    const p = input.prepared;
    const jobId = p.jobId;
    const attempt = info.attempt;
    const workerId = deps.workerId;
    const log = deps.log.child({ jobId, model: p.spec.model, attempt, workerId });
    const t0 = Date.now();
    const workDir = p.workDir;
    const ckptDir = path.join(workDir, 'checkpoints');
    const artifactDir = path.join(workDir, 'artifacts');
    const logFile = path.join(workDir, 'trainer.log');
    fs.mkdirSync(ckptDir, { recursive: true });
    fs.mkdirSync(artifactDir, { recursive: true });

    const trainerCfg = deps.config.trainers[p.spec.trainer];
    if (!trainerCfg) {
      throw ApplicationFailure.nonRetryable(
        `trainer "${p.spec.trainer}" is not defined in this worker's ${path.basename(deps.config.file)} (workers and control must share one config)`,
        ErrorType.WorkerConfig,
      );
    }

    // Fence. The newest attempt owns the work dir: it writes the lease, and an older attempt that wakes
    // up (SIGCONT, network back) sees it, stops its trainer, and stops touching the manifest. An
    // attempt that is itself already older than the lease (a task handed to a frozen worker's pending
    // poll, run after it thawed) starts nothing.
    const gen = generationOf(info);
    const prior = readLease(workDir);
    if (prior && prior.gen > gen) {
      log.warn({ owner: prior.workerId, ownerAttempt: prior.attempt }, 'a newer attempt already owns this job; not starting a trainer');
      throw ApplicationFailure.retryable(`attempt ${attempt} of ${jobId} is stale: attempt ${prior.attempt} on ${prior.workerId} already owns the job`, ErrorType.AttemptSuperseded);
    }
    const leaseToken = crypto.randomUUID();
    const lease: Lease = { token: leaseToken, gen, attempt, workerId, at: new Date().toISOString() };
    writeLease(workDir, lease);
    const superseded = (): boolean => {
      const l = readLease(workDir);
      if (!l || l.token === leaseToken) return false;
      if (l.gen >= gen) return true;
      // An older attempt wrote over our lease (it read the file before we wrote ours): take it back.
      writeLease(workDir, lease);
      return false;
    };

    // One live trainer per job: a trainer of an earlier attempt still running on this host dies first
    // (SIGTERM, SIGKILL after the grace period), before this attempt reads the manifest.
    const pidfile = pidfileFor(deps.config.home, jobId);
    const stale = readPidfile(pidfile);
    if (stale) {
      if (await killRecordedTrainer(stale, p.timeouts.cancelGraceMs)) log.warn({ trainerPid: stale.trainerPid }, 'killed a trainer left by an earlier attempt of this job');
      fs.rmSync(pidfile, { force: true });
    }

    // Resume point: the newest checkpoint that was announced and still exists.
    const hb = (info.heartbeatDetails ?? null) as TrainHeartbeat | null;
    const known = new Map<string, CheckpointRef>();
    for (const c of [...readManifest(workDir), ...(hb?.checkpoints ?? []), ...(input.resumeFrom ? [input.resumeFrom] : [])]) known.set(c.path, c);
    const candidates = [...known.values()].sort((a, b) => b.step - a.step);
    const swept = sweepUnannounced(ckptDir, candidates, (cp) => deps.isPinned(cp));
    if (swept.length) log.warn({ removed: swept }, 'removed checkpoints an earlier attempt wrote but never announced');
    let resumedFrom: CheckpointRef | null = null;
    for (const c of candidates) {
      if (!insideDir(workDir, c.path)) {
        log.warn({ path: c.path }, 'ignoring a resume checkpoint outside the job dir');
        continue;
      }
      if (fs.existsSync(c.path)) {
        resumedFrom = c;
        break;
      }
      log.warn({ path: c.path, step: c.step }, 'checkpoint to resume from is missing; trying the previous one');
    }
    let checkpoints: CheckpointRef[] = candidates.filter((c) => fs.existsSync(c.path) && insideDir(workDir, c.path)).sort((a, b) => a.step - b.step);
    if (!resumedFrom && p.spec.baseCheckpoint) {
      if (insideDir(deps.config.artifactsRoot, p.spec.baseCheckpoint) && fs.existsSync(p.spec.baseCheckpoint)) {
        resumedFrom = { step: 0, path: p.spec.baseCheckpoint, metrics: {} };
      } else {
        throw ApplicationFailure.nonRetryable(`baseCheckpoint ${p.spec.baseCheckpoint} does not exist under artifacts.root`, ErrorType.InvalidJobSpec);
      }
    }

    // GPUs: distinct ids per concurrent attempt on this worker.
    const leaseOwner = `${jobId}#${attempt}#${leaseToken}`;
    let gpuIds: string[] | null = deps.gpus.tryLease(leaseOwner, p.spec.gpus);
    while (gpuIds === null) {
      ctx.heartbeat({ attempt, step: resumedFrom?.step ?? 0, epoch: null, lastCheckpoint: resumedFrom, checkpoints, metrics: {}, gpu: null, workerId } satisfies TrainHeartbeat);
      await ctx.sleep(1000);
      gpuIds = deps.gpus.tryLease(leaseOwner, p.spec.gpus);
    }
    deps.metrics.jobStarted(p.spec.pool);

    const state = {
      step: resumedFrom?.step ?? 0,
      totalSteps: null as number | null,
      epoch: null as number | null,
      totalEpochs: null as number | null,
      metrics: {} as Record<string, number>,
      validation: {} as Record<string, number>,
      modelPath: null as string | null,
      firstStep: null as number | null,
      malformed: 0,
      lastAdvance: Date.now(),
      lastProgressAt: null as string | null,
      rateWindow: [] as Array<{ t: number; step: number }>,
      gpu: null as GpuTelemetry[] | null,
      checkpointBytes: checkpoints.reduce((s, c) => s + diskBytes(c.path), 0),
    };
    const pinned = new Set<string>([...(input.resumeFrom ? [input.resumeFrom.path] : []), ...(p.spec.baseCheckpoint ? [p.spec.baseCheckpoint] : [])]);
    const isPinned = (cp: string): boolean => pinned.has(cp) || deps.isPinned(cp);
    const lastCheckpoint = (): CheckpointRef | null => (checkpoints.length ? checkpoints[checkpoints.length - 1]! : resumedFrom);

    const stepsPerSec = (): number | null => {
      const w = state.rateWindow;
      if (w.length < 2) return null;
      const dt = (w[w.length - 1]!.t - w[0]!.t) / 1000;
      return dt > 0 ? (w[w.length - 1]!.step - w[0]!.step) / dt : null;
    };
    const report = (final = false): ProgressReport => {
      const sps = stepsPerSec();
      return {
        attempt,
        workerId,
        step: state.step,
        totalSteps: state.totalSteps,
        epoch: state.epoch,
        totalEpochs: state.totalEpochs,
        metrics: state.metrics,
        firstStep: state.firstStep,
        resumedFrom,
        lastCheckpoint: lastCheckpoint(),
        checkpoints,
        checkpointBytes: state.checkpointBytes,
        validation: state.validation,
        gpuIds: gpuIds ?? [],
        gpu: state.gpu,
        malformedEvents: state.malformed,
        stepsPerSec: sps,
        etaMs: sps && state.totalSteps ? Math.max(0, ((state.totalSteps - state.step) / sps) * 1000) : null,
        lastProgressAt: state.lastProgressAt,
        final,
      };
    };
    const heartbeat = () =>
      ctx.heartbeat({
        attempt,
        step: state.step,
        epoch: state.epoch,
        lastCheckpoint: lastCheckpoint(),
        checkpoints,
        metrics: state.metrics,
        gpu: state.gpu,
        workerId,
      } satisfies TrainHeartbeat);
    let lastSignal = 0;
    const signalWorkflow = async (final = false) => {
      lastSignal = Date.now();
      try {
        await deps.client.workflow.getHandle(jobId, input.runId).signal('kiln.report', report(final));
      } catch (err) {
        log.debug({ err: String(err) }, 'progress signal not delivered');
      }
    };

    const onCheckpoint = (e: Extract<TrainerEvent, { type: 'checkpoint' }>) => {
      // Fenced: a superseded attempt must not rewrite the manifest or prune what the new owner resumes from.
      if (superseded()) {
        log.warn({ step: e.step }, 'checkpoint from a superseded attempt ignored');
        return;
      }
      const cp = path.resolve(workDir, e.path);
      if (!insideDir(workDir, cp)) {
        log.warn({ path: e.path }, 'trainer announced a checkpoint outside the job dir; ignored');
        state.malformed += 1;
        return;
      }
      if (!fs.existsSync(cp)) {
        log.warn({ path: cp }, 'trainer announced a checkpoint that does not exist; ignored');
        return;
      }
      const ref: CheckpointRef = { step: e.step, path: cp, metrics: { ...state.metrics, ...e.metrics } };
      checkpoints = [...checkpoints.filter((c) => c.path !== cp), ref].sort((a, b) => a.step - b.step);
      const { keep, drop } = selectKept(checkpoints, p.retention, isPinned);
      for (const d of drop) {
        fs.rmSync(d.path, { recursive: true, force: true });
      }
      checkpoints = keep;
      writeManifest(workDir, checkpoints);
      state.checkpointBytes = checkpoints.reduce((s, c) => s + diskBytes(c.path), 0);
      deps.metrics.checkpoints(jobId, checkpoints.length, state.checkpointBytes);
      heartbeat();
      // Checkpoints are worth a signal (the workflow reports the last one), but not more than one a second.
      if (Date.now() - lastSignal > 1000) void signalWorkflow();
    };
    const onEvent = (e: TrainerEvent) => {
      switch (e.type) {
        case 'progress':
          if (state.firstStep === null) state.firstStep = e.step;
          if (e.step !== state.step) state.lastAdvance = Date.now();
          state.step = e.step;
          state.totalSteps = e.total_steps ?? state.totalSteps;
          state.epoch = e.epoch ?? state.epoch;
          state.totalEpochs = e.total_epochs ?? state.totalEpochs;
          state.metrics = { ...state.metrics, ...e.metrics };
          state.lastProgressAt = new Date().toISOString();
          state.rateWindow.push({ t: Date.now(), step: e.step });
          if (state.rateWindow.length > 20) state.rateWindow.shift();
          deps.metrics.progress(jobId, stepsPerSec());
          heartbeat();
          if (state.firstStep === e.step) void signalWorkflow();
          break;
        case 'checkpoint':
          onCheckpoint(e);
          break;
        case 'metrics':
          if (e.split === 'validation' || e.split === 'val' || e.split === 'eval') state.validation = { ...state.validation, ...e.values };
          heartbeat();
          break;
        case 'artifact': {
          const ap = path.resolve(workDir, e.path);
          if (!insideDir(workDir, ap)) log.warn({ path: e.path }, 'trainer announced an artifact outside the job dir; ignored');
          else if (e.name === 'model') state.modelPath = ap;
          break;
        }
      }
    };

    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...trainerCfg.env,
      KILN_PROTOCOL: '1',
      KILN_JOB_ID: jobId,
      KILN_ATTEMPT: String(attempt),
      KILN_PARAMS: JSON.stringify(p.params),
      KILN_WORK_DIR: workDir,
      KILN_CHECKPOINT_DIR: ckptDir,
      KILN_RESUME_FROM: resumedFrom?.path ?? '',
      KILN_ARTIFACT_DIR: artifactDir,
      KILN_EVENTS_FD: '3',
      KILN_MODE: 'train',
      CUDA_VISIBLE_DEVICES: gpuIds.join(','),
    };
    fs.appendFileSync(logFile, `\n=== kiln: attempt ${attempt} on ${workerId} at ${new Date().toISOString()}${resumedFrom ? `, resuming from step ${resumedFrom.step} (${resumedFrom.path})` : ''}; CUDA_VISIBLE_DEVICES=${env.CUDA_VISIBLE_DEVICES} ===\n`);
    log.info({ resumeFrom: resumedFrom?.path ?? null, gpuIds }, 'starting trainer');

    const trainer = startTrainer({
      argv: deps.trainerArgv(trainerCfg.command),
      env,
      cwd: workDir,
      logFile,
      pidfile,
      graceMs: p.timeouts.cancelGraceMs,
      onEvent,
      onMalformed: (line, why) => {
        state.malformed += 1;
        if (state.malformed <= 20 || state.malformed % 1000 === 0) log.warn({ why, line: line.slice(0, 200), count: state.malformed }, 'malformed trainer event ignored');
      },
    });
    deps.onTrainerStarted?.(jobId, attempt);

    let stopReason: 'cancel' | 'stall' | 'superseded' | null = null;
    let cancelErr: unknown = null;
    const stopTrainer = (why: 'cancel' | 'stall' | 'superseded') => {
      if (stopReason) return;
      stopReason = why;
      log.info({ why }, 'stopping trainer');
      void trainer.stop(p.timeouts.cancelGraceMs);
    };
    ctx.cancelled.catch((err) => {
      cancelErr = err;
      deps.metrics.cancelled(p.spec.pool);
      stopTrainer('cancel');
    });

    let lastGpuSample = 0;
    const ticker = setInterval(() => {
      heartbeat();
      const now = Date.now();
      if (!stopReason && now - state.lastAdvance > p.timeouts.stallMs) {
        log.warn({ stallMs: p.timeouts.stallMs, step: state.step }, 'trainer stalled: step has not advanced');
        deps.metrics.stalled(p.spec.pool);
        stopTrainer('stall');
      }
      if (!stopReason && superseded()) {
        log.warn('a newer attempt owns this job; stopping this attempt');
        stopTrainer('superseded');
      }
      deps.metrics.sinceProgress(jobId, (now - state.lastAdvance) / 1000);
      if (now - lastGpuSample > 5000 && gpuIds && gpuIds.length) {
        lastGpuSample = now;
        void deps.sampleGpus(gpuIds).then((g) => {
          state.gpu = g;
        });
      }
      // Progress signals become history events: their interval grows with the attempt's age
      // (5 s at first, ~3 min after 10 h), so a week-long run stays far below the history limit.
      // Heartbeats (every tick) keep the fast, unbounded view for `kiln status`.
      if (now - lastSignal > Math.max(p.progressIntervalMs, (now - t0) / 200)) void signalWorkflow();
    }, TICK_MS);

    let code: number;
    try {
      code = await trainer.exited;
    } finally {
      clearInterval(ticker);
      deps.gpus.release(leaseOwner);
      deps.metrics.jobEnded(p.spec.pool, jobId);
      // The shim removes the pidfile when the trainer exits; make sure of it on every path, but never
      // remove a newer attempt's record (it is how that attempt's trainer gets found and killed).
      if (readPidfile(pidfile)?.shimPid === trainer.child.pid) fs.rmSync(pidfile, { force: true });
    }
    heartbeat();
    const tail = logTail(logFile);

    if (stopReason === 'cancel') {
      await signalWorkflow(true);
      log.info({ code, lastCheckpoint: lastCheckpoint()?.path ?? null }, 'trainer stopped after cancellation');
      throw cancelErr instanceof CancelledFailure ? cancelErr : new CancelledFailure('cancelled');
    }
    if (stopReason === 'stall') {
      throw ApplicationFailure.retryable(`trainer made no progress for ${p.timeouts.stallMs} ms at step ${state.step}; killed it`, ErrorType.TrainerStalled, { step: state.step, logTail: tail });
    }
    if (stopReason === 'superseded') {
      throw ApplicationFailure.retryable(`attempt ${attempt} was superseded by a newer attempt of ${jobId}`, ErrorType.AttemptSuperseded);
    }
    if (code === 2) {
      throw ApplicationFailure.nonRetryable(`trainer rejected its params (exit 2):\n${tail}`, ErrorType.InvalidParams, { exitCode: code, logTail: tail });
    }
    if (code !== 0) {
      const how = code > 128 ? `was killed by signal ${code - 128}` : `exited with code ${code}`;
      throw ApplicationFailure.retryable(`trainer ${how} at step ${state.step}:\n${tail}`, ErrorType.TrainerFailed, { exitCode: code, step: state.step, logTail: tail });
    }
    await signalWorkflow(true);
    const last = lastCheckpoint();
    return {
      attempt,
      workerId,
      steps: state.step,
      epochs: state.epoch,
      finalLoss: typeof state.metrics.loss === 'number' ? state.metrics.loss : null,
      metrics: state.metrics,
      validation: state.validation,
      modelPath: state.modelPath,
      lastCheckpoint: last,
      checkpoints,
      gpuIds: gpuIds ?? [],
      gpu: state.gpu,
      firstStep: state.firstStep,
      resumedFrom,
      durationMs: Date.now() - t0,
    };
  };
}
