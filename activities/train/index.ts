/**
 * The `train` activity: runs one attempt of a training job on a GPU worker, supervising the trainer.
 *
 * - resumes from the newest verified checkpoint (heartbeat details, the job's manifest, or the pause
 *   checkpoint), falling back to the previous one when the newest is missing (attempt.ts,
 *   src/supervisor/workdir.ts);
 * - heartbeats on every event and at least twice a second, so a dead worker is noticed by the
 *   heartbeat timeout and a cancel arrives within about a second (progress.ts, supervise.ts);
 * - kills a hung trainer (step not advancing for the stall timeout) and fails with TrainerStalled;
 * - fences stale attempts: a newer attempt's lease file makes an old one kill its trainer and stop;
 * - keeps the latest N + best K + pinned checkpoints (events.ts).
 */
import { Context } from '@temporalio/activity';
import { configDrift } from '../../src/config/spec';
import type { TrainResult } from '../../src/shared/summary';
import { pinnedBy } from '../../src/registry/pinned';
import type { GpuDeps } from '../deps';
import { beginAttempt, leaseGpus, type TrainAttempt, type TrainInput } from './attempt';
import { startTrainerLogUpload, uploadArtifacts } from './artifacts';
import { releaseResumePin } from './events';
import { ProgressChannel, TrainProgress } from './progress';
import { superviseTrainer } from './supervise';
import { CheckpointUploader } from './upload';

export type { TrainInput } from './attempt';

export function createTrain(workerDeps: GpuDeps) {
  return async function train(input: TrainInput): Promise<TrainResult> {
    const ctx = Context.current();
    // What the registry pins in this job's folder comes with the job: a GPU worker opens no database.
    const pinned = input.prepared.pinned ?? [];
    const deps: GpuDeps = { ...workerDeps, isPinned: (p) => pinnedBy(pinned, p) || workerDeps.isPinned(p) };
    const drift = configDrift(deps.config, input.prepared.spec, input.prepared.jobId, deps.workerId);
    if (drift) throw drift;
    const a = await beginAttempt(deps, ctx, input);
    try {
      return await runAttempt(deps, ctx, a);
    } finally {
      a.fence?.stop();
    }
  };
}

async function runAttempt(deps: GpuDeps, ctx: Context, a: TrainAttempt): Promise<TrainResult> {
  const input = a.input;
  const { gpuIds, leaseOwner } = await leaseGpus(deps, ctx, a);
  deps.metrics.jobStarted(a.p.spec.pool);
  // Built after the GPU wait: the stall clock starts when the trainer can run.
  const progress = new TrainProgress(a.attempt, a.workerId, a.resumedFrom, a.checkpoints, gpuIds);
  progress.restartedFromScratch = a.restartedFromScratch;
  progress.skippedCheckpoints = a.skippedCheckpoints;
  const channel = new ProgressChannel(ctx, deps.client.workflow.getHandle(a.jobId, input.runId), progress, a.log, input.reportToken, a.p.progressIntervalMs);
  const errors: { onError: (err: unknown) => void } = { onError: () => undefined };
  const uploader = deps.store
    ? new CheckpointUploader(deps.store, {
        jobId: a.jobId,
        workDir: a.workDir,
        log: a.log,
        concurrency: deps.config.storage.kind === 's3' ? deps.config.storage.concurrency : 4,
        stillOwner: () => !a.lease.superseded(),
        confirmOwner: async () => !a.lease.superseded() && (a.fence ? await a.fence.confirm() : true),
        onError: (err) => errors.onError(err),
      })
    : null;
  if (uploader) {
    progress.uploadState = () => (uploader.state ? { ...uploader.state } : null);
    progress.uploadFailures = () => (uploader.failures ? { count: uploader.failures.count, last: { ...uploader.failures.last } } : null);
  }
  const logUpload = deps.store ? await startTrainerLogUpload(deps.store, { jobId: a.jobId, workDir: a.workDir, attempt: a.attempt, log: a.log }) : null;
  let result: TrainResult;
  try {
    result = await superviseTrainer(deps, ctx, a, { gpuIds, leaseOwner, progress, channel, uploader, errors });
  } finally {
    await logUpload?.stop();
  }
  result = await releaseResumePin(deps, a, result, uploader);
  return storeModel(deps, a, result, channel);
}

/** With shared storage, the trained model and the rest of the artifacts folder go up before the activity returns; the result carries their URIs. */
async function storeModel(deps: GpuDeps, a: TrainAttempt, result: TrainResult, channel: ProgressChannel): Promise<TrainResult> {
  if (!deps.store || !result.modelPath || a.lease.superseded()) return result;
  // Heartbeats keep the attempt's details (its checkpoints), so a retry after a failed upload resumes.
  const ticker = setInterval(() => channel.heartbeat(), 1000);
  try {
    const concurrency = deps.config.storage.kind === 's3' ? deps.config.storage.concurrency : 4;
    const { modelUri, artifacts } = await uploadArtifacts(deps.store, { jobId: a.jobId, workDir: a.workDir, modelPath: result.modelPath, log: a.log, concurrency });
    return { ...result, modelUri, artifacts };
  } finally {
    clearInterval(ticker);
  }
}
