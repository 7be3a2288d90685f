/**
 * What a train attempt does with each trainer event: progress moves the step (and the stall clock),
 * a checkpoint is verified, kept or pruned by retention and written to the manifest (fenced), metrics
 * and artifacts are recorded. Every event is heartbeated.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CheckpointRef } from '../../src/shared/progress';
import type { TrainResult } from '../../src/shared/summary';
import type { TrainerEvent } from '../../src/supervisor/protocol';
import { digestCheckpoint, digestSmallCheckpoint, type CheckpointDigest } from '../../src/supervisor/checkpointDigest';
import { selectKept } from '../../src/supervisor/retention';
import { insideDir, writeManifest } from '../../src/supervisor/workdir';
import type { PreparedJob } from '../../src/shared/spec';
import type { GpuDeps } from '../deps';
import type { TrainAttempt } from './attempt';
import type { ProgressChannel, TrainProgress } from './progress';
import type { CheckpointUploader } from './upload';

const VALIDATION_SPLITS = new Set(['validation', 'val', 'eval']);

/** The event handler, and the local checkpoint verifications it still has queued (awaited when the trainer exits). */
export interface TrainerEvents {
  onEvent: (e: TrainerEvent) => void;
  settled: () => Promise<void>;
}

export function trainerEventHandler(
  deps: GpuDeps,
  a: TrainAttempt,
  progress: TrainProgress,
  channel: ProgressChannel,
  o: { uploader?: CheckpointUploader | null; onError: (err: unknown) => void },
): TrainerEvents {
  const { uploader } = o;
  const { log, workDir, jobId } = a;
  // The pause checkpoint and the base checkpoint are what this attempt started from: never pruned.
  // Nor are quarantined ones (kept for inspection until the job ends).
  const quarantined = (a.input.skip ?? []).filter((s) => s.quarantined).map((s) => s.path);
  const pinned = new Set<string>([...(a.input.resumeFrom ? [a.input.resumeFrom.path] : []), ...(a.p.spec.baseCheckpoint ? [a.p.spec.baseCheckpoint] : []), ...quarantined]);
  const isPinned = (cp: string): boolean => pinned.has(cp) || deps.isPinned(cp);

  const onCheckpoint = (e: Extract<TrainerEvent, { type: 'checkpoint' }>) => {
    // Fenced: a superseded attempt must not rewrite the manifest or prune what the new owner resumes from.
    if (a.lease.superseded()) {
      log.warn({ step: e.step }, 'checkpoint from a superseded attempt ignored');
      return;
    }
    const cp = path.resolve(workDir, e.path);
    if (!insideDir(workDir, cp)) {
      log.warn({ path: e.path }, 'trainer announced a checkpoint outside the job dir; ignored');
      progress.malformed += 1;
      return;
    }
    if (!fs.existsSync(cp)) {
      log.warn({ path: cp }, 'trainer announced a checkpoint that does not exist; ignored');
      return;
    }
    const ref: CheckpointRef = { step: e.step, path: cp, metrics: { ...progress.metrics, ...e.metrics } };
    // With shared storage the checkpoint is verified only once uploaded; until then it is not a resume point.
    if (uploader) uploader.enqueue(ref);
    else local.enqueue(ref);
  };

  /** A verified checkpoint: retention (local copies, and stored objects), the manifest, a heartbeat. */
  const verified = (ref: CheckpointRef) => {
    const all = [...progress.checkpoints.filter((c) => c.path !== ref.path), ref].sort((x, y) => x.step - y.step);
    const { keep, drop } = selectKept(all, a.p.retention, isPinned);
    for (const d of drop) {
      fs.rmSync(d.path, { recursive: true, force: true });
    }
    progress.setCheckpoints(keep);
    writeManifest(workDir, keep);
    deps.metrics.checkpoints(jobId, keep.length, progress.checkpointBytes);
    channel.heartbeat();
    // Checkpoints are worth a report (the workflow records the newest one), coalesced by the channel.
    channel.offer();
    return { keep, drop };
  };
  if (uploader) wireUploader(uploader, a, progress, isPinned, verified);
  const local = localVerifier(a, channel, verified, o.onError);

  const onEvent = (e: TrainerEvent) => {
    switch (e.type) {
      case 'progress':
        progress.onProgress(e);
        deps.metrics.progress(jobId, progress.stepsPerSec());
        channel.heartbeat();
        if (progress.firstStep === e.step) channel.offer();
        break;
      case 'checkpoint':
        onCheckpoint(e);
        break;
      case 'metrics':
        if (VALIDATION_SPLITS.has(e.split)) progress.validation = { ...progress.validation, ...e.values };
        channel.heartbeat();
        break;
      case 'artifact': {
        const ap = path.resolve(workDir, e.path);
        if (!insideDir(workDir, ap)) log.warn({ path: e.path }, 'trainer announced an artifact outside the job dir; ignored');
        else if (e.name === 'model') progress.modelPath = ap;
        break;
      }
    }
  };
  return { onEvent, settled: local.settled };
}

/**
 * Local storage: the size and sha256 go into the manifest, checked again before a resume. A large
 * checkpoint's hash streams (the event loop keeps running, heartbeating as it goes); a small one with
 * nothing queued is hashed at once. Either way checkpoints are verified one at a time in the order
 * announced, so retention and the manifest see them in that order.
 */
function localVerifier(a: TrainAttempt, channel: ProgressChannel, verified: (ref: CheckpointRef) => unknown, onError: (err: unknown) => void): { enqueue: (ref: CheckpointRef) => void; settled: () => Promise<void> } {
  const { log } = a;
  let queue: Promise<void> = Promise.resolve();
  let pending = 0;
  const unreadable = (ref: CheckpointRef, err: unknown) => log.warn({ path: ref.path, err: err instanceof Error ? err.message : String(err) }, 'trainer announced a checkpoint that cannot be read; ignored');
  const record = (ref: CheckpointRef, digest: CheckpointDigest) => {
    if (a.lease.superseded()) {
      log.warn({ step: ref.step }, 'checkpoint from a superseded attempt ignored');
      return;
    }
    // A disk error recording it (ENOSPC in the manifest) fails this attempt, never the worker.
    try {
      verified({ ...ref, ...digest });
    } catch (err) {
      onError(err);
    }
  };
  const verify = async (ref: CheckpointRef) => {
    let digest: CheckpointDigest;
    try {
      digest = await digestCheckpoint(ref.path, { onProgress: () => channel.heartbeat() });
    } catch (err) {
      unreadable(ref, err);
      return;
    }
    record(ref, digest);
  };
  return {
    enqueue: (ref) => {
      // A small checkpoint with none queued before it is verified at once (a few ms of hashing).
      if (pending === 0) {
        let small: CheckpointDigest | null;
        try {
          small = digestSmallCheckpoint(ref.path);
        } catch (err) {
          unreadable(ref, err);
          return;
        }
        if (small) return record(ref, small);
      }
      pending += 1;
      queue = queue
        .then(() => verify(ref))
        .catch(onError)
        .finally(() => (pending -= 1));
    },
    settled: () => queue,
  };
}

/**
 * Waiting checkpoints retention drops once the newer ones (waiting or uploading) are verified: uploading
 * them would only delete them again, while their local copies pile up when the trainer checkpoints
 * faster than the store takes them.
 */
export function supersededInQueue(
  verified: readonly CheckpointRef[],
  inFlight: CheckpointRef | null,
  queued: readonly CheckpointRef[],
  retention: PreparedJob['retention'],
  isPinned: (cp: string) => boolean,
): CheckpointRef[] {
  const pending = [...(inFlight ? [inFlight] : []), ...queued];
  const all = [...verified.filter((c) => !pending.some((q) => q.path === c.path)), ...pending];
  const { drop } = selectKept(all, retention, isPinned);
  return queued.filter((q) => drop.includes(q));
}

/** With shared storage: retention before each upload, and what a stored (verified) checkpoint changes. */
function wireUploader(
  uploader: CheckpointUploader,
  a: TrainAttempt,
  progress: TrainProgress,
  isPinned: (cp: string) => boolean,
  verified: (ref: CheckpointRef) => { keep: CheckpointRef[]; drop: CheckpointRef[] },
): void {
  const { log, workDir } = a;
  uploader.supersededInQueue = (queued, inFlight) => (a.lease.superseded() ? [] : supersededInQueue(progress.checkpoints, inFlight, queued, a.p.retention, isPinned));
  // Retention in storage holds at every moment: what the new checkpoint will push out goes before
  // its upload, except the newest verified one (the resume point until the new one is stored).
  uploader.beforeUpload = async (ref) => {
    if (a.lease.superseded()) return;
    const newest = progress.checkpoints[progress.checkpoints.length - 1];
    const all = [...progress.checkpoints.filter((c) => c.path !== ref.path), ref].sort((x, y) => x.step - y.step);
    const early = selectKept(all, a.p.retention, isPinned).drop.filter((d) => d !== ref && d.path !== newest?.path);
    if (!early.length) return;
    const keep = progress.checkpoints.filter((c) => !early.includes(c));
    progress.setCheckpoints(keep);
    writeManifest(workDir, keep);
    await uploader.writeManifest(keep).catch((err: unknown) => log.warn({ err: String(err) }, 'cannot write the job manifest to storage'));
    for (const d of early) fs.rmSync(d.path, { recursive: true, force: true });
    await uploader.deleteStored(early);
  };
  // A checkpoint given up after failed uploads is swept from the local disk, unless pinned or kept under its path.
  uploader.keepLocal = (ref) => isPinned(ref.path) || progress.checkpoints.some((c) => c.path === ref.path);
  uploader.onVerified = async (ref) => {
    if (a.lease.superseded()) return;
    const { keep, drop } = verified(ref);
    await uploader.writeManifest(keep).catch((err: unknown) => log.warn({ err: String(err) }, 'cannot write the job manifest to storage'));
    await uploader.deleteStored(drop);
  };
}

/**
 * The attempt that finished the job lets go of the pause checkpoint it was pinning (it started from
 * it): once training is done it is an ordinary checkpoint, so what stays is the latest N + best K +
 * registered ones (the registry's pins) + the base checkpoint, as after a job never paused.
 */
export async function releaseResumePin(
  deps: GpuDeps,
  a: TrainAttempt,
  result: TrainResult,
  uploader: CheckpointUploader | null,
): Promise<TrainResult> {
  if (!a.input.resumeFrom || a.lease.superseded()) return result;
  const isPinned = (cp: string): boolean => cp === a.p.spec.baseCheckpoint || deps.isPinned(cp);
  const { keep, drop } = selectKept(result.checkpoints, a.p.retention, isPinned);
  if (!drop.length) return result;
  for (const d of drop) fs.rmSync(d.path, { recursive: true, force: true });
  writeManifest(a.workDir, keep);
  if (uploader) {
    await uploader.writeManifest(keep).catch((err: unknown) => a.log.warn({ err: String(err) }, 'cannot write the job manifest to storage'));
    await uploader.deleteStored(drop);
  }
  a.log.info({ dropped: drop.map((d) => d.step), kept: keep.map((k) => k.step) }, 'job trained: the pause checkpoint is no longer pinned');
  return { ...result, checkpoints: keep };
}

