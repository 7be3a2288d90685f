/**
 * The start of a train attempt, before any trainer runs: take the work dir over (the lease fence),
 * kill a trainer an earlier attempt left on this host, pick the resume point, and lease GPUs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Context, Info } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { KilnConfig } from '../../src/config/load';
import type { Logger } from '../../src/logger';
import { ErrorType } from '../../src/shared/errors';
import type { CheckpointRef, ProgressReport, SkippedCheckpoint, SkipRef, TrainHeartbeat } from '../../src/shared/progress';
import type { PreparedJob } from '../../src/shared/spec';
import { killRecordedTrainer, pidfileFor, readPidfile } from '../../src/supervisor/pidfiles';
import { selectKept } from '../../src/supervisor/retention';
import { artifactDir, checkpointDir, chooseResumePoint, dropJournals, generationOf, insideDir, journalDir, journalFile, readManifest, WorkDirLease, writeManifest, type ResumePoint } from '../../src/supervisor/workdir';
import type { GpuDeps } from '../deps';
import { StoreFence } from './fence';
import { jobIoFailure } from './ioError';
import { waitingHeartbeat } from './progress';
import { lostCheckpoints, recordedCheckpoints, resumeFromStore } from './resume';

export interface TrainInput {
  prepared: PreparedJob;
  /** Checkpoint to resume from after a pause (retries use heartbeat details instead). */
  resumeFrom: CheckpointRef | null;
  runId: string;
  /** Issued by the workflow for this activity; its progress reports must carry it. */
  reportToken?: string;
  /** The workflow's attempt number (each attempt is its own activity); the activity's own otherwise. */
  attempt?: number;
  /**
   * The checkpoints the job recorded so far (from its reports), the last step and worker: how an
   * attempt on another host knows what it should resume from. Absent in older histories.
   */
  recorded?: { checkpoints: CheckpointRef[]; step: number; workerId: string | null };
  /** Checkpoints an earlier attempt failed on right after resuming (suspect) or twice (quarantined): never the resume point. */
  skip?: SkipRef[];
  /** After `kiln retry --from-checkpoint`: never resume from a checkpoint newer than this step (workflows/suspects.ts `rewound`). */
  maxResumeStep?: number;
}

/** One attempt of a train activity, once it owns the work dir. */
export interface TrainAttempt {
  input: TrainInput;
  p: PreparedJob;
  jobId: string;
  attempt: number;
  workerId: string;
  log: Logger;
  /** When the attempt started (epoch ms). */
  t0: number;
  workDir: string;
  trainer: NonNullable<KilnConfig['trainers'][string]>;
  lease: WorkDirLease;
  /** This attempt's generation (lease) and the journal its shim writes. */
  gen: number;
  journal: string;
  pidfile: string;
  resumedFrom: CheckpointRef | null;
  /** Announced checkpoints that still exist, oldest first. */
  checkpoints: CheckpointRef[];
  /** The lease object in shared storage (storage.kind: s3); stop() it when the attempt ends. */
  fence: StoreFence | null;
  /** Every recorded checkpoint was unreachable and this attempt starts from step 0 (onLostCheckpoints: restart). */
  restartedFromScratch: ProgressReport['restartedFromScratch'];
  /** Newer recorded checkpoints this attempt stepped over: changed on disk since they were verified. */
  skippedCheckpoints: SkippedCheckpoint[];
}

/** Starts the attempt; a disk error on the job's files fails only this attempt (JobIoError). */
export async function beginAttempt(deps: GpuDeps, ctx: Context, input: TrainInput): Promise<TrainAttempt> {
  try {
    return await takeOver(deps, ctx, input);
  } catch (err) {
    throw jobIoFailure(input.prepared.jobId, err);
  }
}

async function takeOver(deps: GpuDeps, ctx: Context, input: TrainInput): Promise<TrainAttempt> {
  const info: Info = ctx.info;
  const p = input.prepared;
  const jobId = p.jobId;
  const attempt = input.attempt ?? info.attempt;
  const workerId = deps.workerId;
  const log = deps.log.child({ jobId, model: p.spec.model, attempt, workerId });
  const t0 = Date.now();
  const workDir = p.workDir;
  fs.mkdirSync(checkpointDir(workDir), { recursive: true });
  fs.mkdirSync(artifactDir(workDir), { recursive: true });
  fs.mkdirSync(journalDir(workDir), { recursive: true });

  const trainer = deps.config.trainers[p.spec.trainer];
  if (!trainer) {
    throw ApplicationFailure.nonRetryable(
      `trainer "${p.spec.trainer}" is not defined in this worker's ${path.basename(deps.config.file)} (workers and control must share one config)`,
      ErrorType.WorkerConfig,
    );
  }

  // An attempt that is itself already older than the lease (a task handed to a frozen worker's pending
  // poll, run after it thawed) starts nothing.
  const gen = generationOf(info);
  const prior = WorkDirLease.owner(workDir);
  if (prior && prior.gen > gen) {
    log.warn({ owner: prior.workerId, ownerAttempt: prior.attempt }, 'a newer attempt already owns this job; not starting a trainer');
    throw ApplicationFailure.retryable(`attempt ${attempt} of ${jobId} is stale: attempt ${prior.attempt} on ${prior.workerId} already owns the job`, ErrorType.AttemptSuperseded);
  }
  const lease = WorkDirLease.take(workDir, { gen, attempt, workerId });
  const fence = await takeStoreFence(deps, { jobId, gen, attempt, lease, log });

  // One live trainer per job: a trainer of an earlier attempt still running on this host dies first
  // (SIGTERM, SIGKILL after the grace period), before this attempt reads the manifest.
  const pidfile = pidfileFor(deps.config.home, jobId);
  const stale = readPidfile(pidfile);
  if (stale) {
    if (await killRecordedTrainer(stale, p.timeouts.cancelGraceMs)) log.warn({ trainerPid: stale.trainerPid }, 'killed a trainer left by an earlier attempt of this job');
    fs.rmSync(pidfile, { force: true });
  }

  const heartbeat = knownCheckpoints((info.heartbeatDetails ?? null) as TrainHeartbeat | null, input.recorded);
  const { resume, recorded } = await findResumePoint(deps, ctx, { input, workDir, log, gen, attempt, heartbeat });
  let restartedFromScratch: ProgressReport['restartedFromScratch'] = null;
  if (!resume.resumedFrom && recorded.length) {
    restartedFromScratch = lostCheckpoints(recorded, { storeUri: deps.store?.uri ?? null, heartbeat, policy: p.onLostCheckpoints ?? 'fail', jobId, log });
  }
  let checkpoints = resume.checkpoints;
  if (resume.adopted.length) {
    // Announced to a shim after its worker died: verified like any checkpoint, kept by retention, now in the manifest.
    log.info({ adopted: resume.adopted.map((c) => ({ step: c.step, path: c.path })) }, 'adopted checkpoints an earlier attempt announced after its worker was gone');
    const isPinned = (cp: string) => cp === input.resumeFrom?.path || cp === p.spec.baseCheckpoint || cp === resume.resumedFrom?.path || deps.isPinned(cp);
    const { keep, drop } = selectKept(checkpoints, p.retention, isPinned);
    for (const d of drop) fs.rmSync(d.path, { recursive: true, force: true });
    writeManifest(workDir, keep);
    checkpoints = keep;
  }
  dropJournals(workDir, gen);
  const resumedFrom = resume.resumedFrom ?? baseCheckpoint(deps.config, p);
  const journal = journalFile(workDir, gen, attempt);
  return { input, p, jobId, attempt, workerId, log, t0, workDir, trainer, lease, gen, journal, pidfile, resumedFrom, checkpoints, restartedFromScratch, fence, skippedCheckpoints: resume.skipped ?? [] };
}

/** With shared storage, the lease object fences attempts on hosts that share no disk. */
async function takeStoreFence(deps: GpuDeps, o: { jobId: string; gen: number; attempt: number; lease: WorkDirLease; log: Logger }): Promise<StoreFence | null> {
  if (!deps.store) return null;
  const r = await StoreFence.take(deps.store, o.jobId, { generation: o.gen, attempt: o.attempt, workerId: deps.workerId, holder: o.lease.token }, o.log).catch((err: unknown) => {
    throw ApplicationFailure.retryable(`cannot take the job's lease in ${deps.store!.uri}: ${err instanceof Error ? err.message : String(err)}`, ErrorType.StorageUnavailable);
  });
  if ('owner' in r) {
    o.log.warn({ owner: r.owner.workerId, ownerAttempt: r.owner.attempt }, 'a newer attempt holds the job’s lease in storage; not starting a trainer');
    throw ApplicationFailure.retryable(`attempt ${o.attempt} of ${o.jobId} is stale: attempt ${r.owner.attempt} on ${r.owner.workerId} already owns the job`, ErrorType.AttemptSuperseded);
  }
  o.lease.remote = () => r.fence.superseded;
  return r.fence.watch();
}

/**
 * The resume point, and every checkpoint the job recorded (inside the work dir): from storage with
 * `storage.kind: s3` (resume.ts), else from this host's work dir (chooseResumePoint).
 */
async function findResumePoint(
  deps: GpuDeps,
  ctx: Context,
  o: { input: TrainInput; workDir: string; log: Logger; gen: number; attempt: number; heartbeat: TrainHeartbeat | null },
): Promise<{ resume: ResumePoint; recorded: CheckpointRef[] }> {
  const { input, workDir, log, heartbeat } = o;
  if (deps.store) {
    const beat = (recorded: CheckpointRef[]) =>
      ctx.heartbeat({ ...waitingHeartbeat({ attempt: o.attempt, workerId: deps.workerId, resumedFrom: heartbeat?.lastCheckpoint ?? null, checkpoints: [...recorded].reverse() }), step: heartbeat?.step ?? 0 });
    const r = await resumeFromStore(deps.store, { ctx, jobId: input.prepared.jobId, workDir, log, heartbeat, resumeFrom: input.resumeFrom, beat, skip: input.skip, maxStep: input.maxResumeStep });
    return { resume: { resumedFrom: r.resumedFrom, checkpoints: r.checkpoints, adopted: [] }, recorded: r.recorded };
  }
  const recorded = recordedCheckpoints([readManifest(workDir), heartbeat?.checkpoints ?? [], input.resumeFrom ? [input.resumeFrom] : []]).filter((c) => insideDir(workDir, c.path));
  const quarantined = new Set((input.skip ?? []).filter((s) => s.quarantined).map((s) => s.path));
  // Checking a large checkpoint's sha256 takes a while: heartbeat (throttled by the SDK) as it goes.
  const onHashing = () => ctx.heartbeat({ ...waitingHeartbeat({ attempt: o.attempt, workerId: deps.workerId, resumedFrom: heartbeat?.lastCheckpoint ?? null, checkpoints: [...recorded].reverse() }), step: heartbeat?.step ?? 0 });
  const resume = await chooseResumePoint(workDir, { heartbeat, resumeFrom: input.resumeFrom, isPinned: (cp) => quarantined.has(cp) || deps.isPinned(cp), log, gen: o.gen, skip: input.skip, maxStep: input.maxResumeStep, onHashing });
  return { resume, recorded };
}

/** The previous attempt's heartbeat details, with the checkpoints the workflow recorded added. */
function knownCheckpoints(hb: TrainHeartbeat | null, rec: TrainInput['recorded']): TrainHeartbeat | null {
  if (!rec?.checkpoints.length) return hb;
  const base: TrainHeartbeat = hb ?? { attempt: 0, step: rec.step, epoch: null, lastCheckpoint: null, checkpoints: [], metrics: {}, gpu: null, workerId: rec.workerId ?? '' };
  return { ...base, step: Math.max(base.step, rec.step), workerId: base.workerId || (rec.workerId ?? ''), checkpoints: [...rec.checkpoints, ...base.checkpoints] };
}

/** A fine-tune with no checkpoint of its own starts from the spec's base checkpoint. */
function baseCheckpoint(config: KilnConfig, p: PreparedJob): CheckpointRef | null {
  if (!p.spec.baseCheckpoint) return null;
  if (insideDir(config.artifactsRoot, p.spec.baseCheckpoint) && fs.existsSync(p.spec.baseCheckpoint)) {
    return { step: 0, path: p.spec.baseCheckpoint, metrics: {} };
  }
  throw ApplicationFailure.nonRetryable(`baseCheckpoint ${p.spec.baseCheckpoint} does not exist under artifacts.root`, ErrorType.InvalidJobSpec);
}

/** GPUs: distinct ids per concurrent attempt on this worker; waits (heartbeating) until enough are free. */
export async function leaseGpus(deps: GpuDeps, ctx: Context, a: TrainAttempt): Promise<{ gpuIds: string[]; leaseOwner: string }> {
  const leaseOwner = `${a.jobId}#${a.attempt}#${a.lease.token}`;
  let gpuIds: string[] | null = deps.gpus.tryLease(leaseOwner, a.p.spec.gpus);
  while (gpuIds === null) {
    ctx.heartbeat(waitingHeartbeat(a));
    await ctx.sleep(1000);
    gpuIds = deps.gpus.tryLease(leaseOwner, a.p.spec.gpus);
  }
  return { gpuIds, leaseOwner };
}
