/**
 * The resume point of an attempt, on any host. With shared storage (`storage.kind: s3`) the
 * candidates are the verified checkpoints recorded in the job's manifest in storage, the heartbeat
 * details of the previous attempt and the pause checkpoint; the newest whose completion marker,
 * manifest and objects verify is downloaded into the work dir (files already there with the right
 * size and sha256 are kept, so the same host re-downloads nothing) and KILN_RESUME_FROM points there.
 * A half-uploaded checkpoint (no marker) is never a resume point.
 *
 * When checkpoints were recorded but none is reachable (local storage on a dead host, objects
 * deleted), the attempt fails with CheckpointsUnreachable, naming them and where they were, unless
 * onLostCheckpoints is `restart`: then it starts from step 0 and says how many steps were lost.
 */
import * as path from 'node:path';
import type { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from '../../src/logger';
import { ErrorType } from '../../src/shared/errors';
import { isSkipped, type CheckpointRef, type ProgressReport, type SkipRef, type TrainHeartbeat } from '../../src/shared/progress';
import { CheckpointNotVerified, downloadCheckpoint, verifyCheckpoint, type ObjectStore } from '../../src/storage';
import { insideDir, readManifest } from '../../src/supervisor/workdir';
import { localPathOf, readStoredManifest } from './upload';

export interface StoredResume {
  resumedFrom: CheckpointRef | null;
  /** Verified checkpoints in storage (local paths on this host), oldest first. */
  checkpoints: CheckpointRef[];
}

/** Every checkpoint the job recorded, newest first, one per path (or URI). */
export function recordedCheckpoints(lists: readonly (readonly CheckpointRef[])[]): CheckpointRef[] {
  const byKey = new Map<string, CheckpointRef>();
  for (const l of lists) for (const c of l) byKey.set(c.uri ?? c.path, c);
  return [...byKey.values()].sort((x, y) => y.step - x.step);
}

/** Picks (and downloads) the resume checkpoint from storage. */
export async function resumeFromStore(
  store: ObjectStore,
  o: { ctx: Context; jobId: string; workDir: string; log: Logger; heartbeat: TrainHeartbeat | null; resumeFrom: CheckpointRef | null; beat: (recorded: CheckpointRef[]) => void; skip?: SkipRef[]; maxStep?: number },
): Promise<StoredResume & { recorded: CheckpointRef[] }> {
  const { log, jobId, workDir } = o;
  const stored = await readStoredManifest(store, jobId, log).catch(() => []);
  const recorded = recordedCheckpoints([readManifest(workDir), o.heartbeat?.checkpoints ?? [], stored, o.resumeFrom ? [o.resumeFrom] : []]);
  const checkpoints: CheckpointRef[] = [];
  let resumedFrom: CheckpointRef | null = null;
  let lastBeat = 0;
  for (const c of recorded) {
    const local = localPathOf(jobId, workDir, c, store);
    if (!local || !insideDir(workDir, local)) {
      log.warn({ step: c.step, path: c.path, uri: c.uri ?? null }, c.uri ? 'recorded checkpoint is not in this job’s storage; ignored' : 'recorded checkpoint was never stored (no storage URI); ignored');
      continue;
    }
    const prefix = c.uri!.slice(store.uri.length + 1);
    const ref: CheckpointRef = { ...c, path: local };
    if (o.maxStep !== undefined && c.step > o.maxStep) {
      log.warn({ step: c.step, uri: c.uri }, `checkpoint is newer than step ${o.maxStep}, where kiln retry --from-checkpoint went back to; not resuming from it`);
      continue;
    }
    const skip = isSkipped(ref, o.skip) ?? isSkipped(c, o.skip);
    if (skip && !resumedFrom) {
      log.warn({ step: c.step, uri: c.uri, quarantined: skip.quarantined }, `checkpoint is ${skip.quarantined ? 'quarantined' : 'suspect'} (an earlier attempt failed right after resuming from it); trying the previous one`);
      if (!skip.quarantined) checkpoints.push(ref);
      continue;
    }
    if (resumedFrom) {
      if ((await verifyCheckpoint(store, prefix)).verified) checkpoints.push(ref);
      continue;
    }
    try {
      const d = await downloadCheckpoint(store, prefix, path.dirname(local), {
        onProgress: () => {
          if (Date.now() - lastBeat < 500) return;
          lastBeat = Date.now();
          o.beat(recorded);
        },
      });
      log.info({ step: c.step, uri: c.uri, reused: d.reused, downloadedBytes: d.downloadedBytes, ms: d.ms }, d.reused ? 'resume checkpoint already here with matching checksums' : 'downloaded the resume checkpoint from storage');
      resumedFrom = ref;
      checkpoints.push(ref);
    } catch (err) {
      if (!(err instanceof CheckpointNotVerified)) {
        throw ApplicationFailure.retryable(`cannot fetch checkpoint step ${c.step} from ${c.uri}: ${err instanceof Error ? err.message : String(err)}`, ErrorType.StorageUnavailable);
      }
      log.warn({ step: c.step, uri: c.uri, problem: err.problem }, 'stored checkpoint is not verified; trying the previous one');
    }
  }
  return { resumedFrom, checkpoints: checkpoints.sort((x, y) => x.step - y.step), recorded };
}

/**
 * Checkpoints were recorded but none could be resumed from: the failure (onLostCheckpoints: fail), or
 * what the attempt reports when it starts over (restart).
 */
export function lostCheckpoints(
  recorded: CheckpointRef[],
  o: { storeUri: string | null; heartbeat: TrainHeartbeat | null; policy: 'fail' | 'restart'; jobId: string; log: Logger },
): NonNullable<ProgressReport['restartedFromScratch']> {
  const where = (c: CheckpointRef) => c.uri ?? c.path;
  const host = o.heartbeat?.workerId ? `, on the host of worker ${o.heartbeat.workerId}` : '';
  const local = recorded.some((c) => !c.uri) ? ` (${o.storeUri ? 'never uploaded: local files' : 'storage.kind: local'}${host})` : '';
  const list = recorded.slice(0, 5).map((c) => `step ${c.step} at ${where(c)}`);
  const more = `${recorded.length > 5 ? `; and ${recorded.length - 5} more` : ''}${local}`;
  const stepsLost = Math.max(o.heartbeat?.step ?? 0, ...recorded.map((c) => c.step));
  const reason = `every recorded checkpoint of ${o.jobId} is unreachable from this host: ${list.join(', ')}${more}`;
  if (o.policy === 'restart') {
    o.log.warn({ stepsLost, checkpoints: recorded.map(where) }, `${reason}; onLostCheckpoints is restart: training from step 0`);
    return { stepsLost, reason };
  }
  throw ApplicationFailure.nonRetryable(
    `${reason}. Nothing was restarted. With several GPU hosts, set storage.kind: s3 in temporal.yaml so checkpoints outlive a host; to train from step 0 instead, set onLostCheckpoints: restart on the model (or the job)`,
    ErrorType.CheckpointsUnreachable,
    { checkpoints: recorded.map((c) => ({ step: c.step, where: where(c) })), stepsLost },
  );
}
