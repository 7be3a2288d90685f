/**
 * A GPU pool worker: the `train` and `evaluate` activities on `kiln-gpu-<pool>`, one concurrent job
 * per slot. Entry point of `kiln worker gpu --pool P`.
 */
import { unknownName } from '../src/shared/names';
import type { Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Runtime, Worker } from '@temporalio/worker';
import { createGpuActivities, noMetrics, type GpuDeps } from '../activities';
import { ErrorType } from '../src/shared/errors';
import { gpuTaskQueue } from '../src/shared/messages';
import type { KilnConfig } from '../src/config/load';
import { commandProblems, describeCommandProblem } from '../src/config/preflight';
import type { Logger } from '../src/logger';
import { detectGpus, GpuLeases, sampleGpus } from '../src/supervisor/gpu';
import { probeCgroups, sweepEmptyCgroups } from '../src/supervisor/cgroup';
import { reapOrphans, type PidRecord } from '../src/supervisor/pidfiles';
import { openStore, redactStorage, type ObjectStore } from '../src/storage';
import { probeStore } from '../src/storage/probe';
import { uploadLeftoverLogs } from '../activities/train/artifacts';
import { workerBase } from './common';
import { createKilnMetrics } from './metrics';

export interface GpuWorkerOptions {
  config: KilnConfig;
  log: Logger;
  pool: string;
  /** Override the pool's slots (tests, load benchmarks). */
  slots?: number;
  taskQueue?: string;
  withMetrics?: boolean;
  onTrainerStarted?: GpuDeps['onTrainerStarted'];
}

async function resolveDevices(config: KilnConfig, pool: string, slotsOverride?: number): Promise<{ devices: string[]; slots: number }> {
  const p = config.workers.pools[pool];
  if (!p) throw new Error(unknownName('pool', pool, Object.keys(config.workers.pools), config.file));
  const devices = p.devices === 'auto' ? await detectGpus() : p.devices.map(String);
  const slots = slotsOverride ?? (devices.length > 0 ? devices.length : p.slots);
  return { devices, slots };
}

/**
 * Fails the attempts of a dead worker on this host through their task tokens, once their trainers are
 * stopped (and their last checkpoints journaled), so the retry starts now, not at the heartbeat timeout.
 */
async function failLostAttempts(client: Client, lost: PidRecord[], log: Logger): Promise<void> {
  await Promise.all(
    lost.map(async (rec) => {
      if (!rec.taskToken) return;
      const err = ApplicationFailure.retryable(`worker lost: worker ${rec.workerPid} on this host died while running attempt ${rec.attempt ?? '?'} of ${rec.jobId ?? '?'} (found by the worker restarted there)`, ErrorType.WorkerLost);
      try {
        await client.activity.fail(Buffer.from(rec.taskToken, 'base64'), err);
        log.warn({ jobId: rec.jobId, attempt: rec.attempt, workerPid: rec.workerPid }, 'failed the attempt of a dead worker so that it is retried at once');
      } catch (e) {
        // Already timed out, completed or retried: nothing to do.
        log.debug({ jobId: rec.jobId, attempt: rec.attempt, err: String(e) }, 'attempt of a dead worker already ended');
      }
    }),
  );
}

/**
 * `storage.kind: s3`: opens the store and probes it (write, read, conditional writes, delete), so bad
 * credentials, a missing bucket or an unreachable endpoint stop the worker at start with the fix,
 * before it takes any job. `kind: local` needs no store here (the work dir is the stored copy).
 */
export async function openCheckpointStore(config: KilnConfig, log: Logger): Promise<ObjectStore | null> {
  if (config.storage.kind !== 's3') return null;
  const store = openStore(config.storage, config);
  try {
    const probe = await probeStore(store);
    log.info({ storage: redactStorage(config.storage), ms: probe.ms }, 'checkpoint storage reachable (write, read, conditional writes, delete)');
    return store;
  } catch (err) {
    store.close();
    throw new Error(`storage ${store.uri} (storage: in ${config.file}) cannot be used by this GPU worker: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A worker that cannot start a model's trainer would fail every job of it: it refuses to start instead. */
export function refuseBrokenCommands(config: KilnConfig, pool: string, log: Logger): void {
  const broken = commandProblems(config, { pool });
  if (!broken.length) return;
  const lines = broken.map(describeCommandProblem);
  log.error({ pool, problems: lines }, 'refusing to start: trainer command(s) cannot start on this host');
  throw new Error(`GPU worker for pool ${pool} refuses to start: ${broken.length} trainer command(s) in ${config.file} cannot start on this host:\n${lines.map((l) => `  - ${l}`).join('\n')}\nfix the command (or install what it needs), check with kiln config check, then start the worker again`);
}

export async function createGpuWorker(o: GpuWorkerOptions): Promise<{ worker: Worker; close: () => Promise<void> }> {
  refuseBrokenCommands(o.config, o.pool, o.log);
  const { devices, slots } = await resolveDevices(o.config, o.pool, o.slots);
  const store = await openCheckpointStore(o.config, o.log);
  const cg = probeCgroups();
  if (!('why' in cg)) o.log.info({ cgroupParent: cg.parent, sweptEmpty: sweepEmptyCgroups(cg.parent) }, 'each trainer runs in its own cgroup');
  else o.log.warn({ why: cg.why }, 'cgroups are not writable here: trainers are stopped by process group, so a trainer child that calls setsid can escape');
  const { killed, lost } = await reapOrphans(o.config.home, (msg, extra) => o.log.warn(extra, msg));
  if (killed.length) o.log.warn({ count: killed.length }, 'killed trainers orphaned by a crashed worker on this host');
  // What a killed worker's attempts wrote to trainer.log after their last upload (the shim's and the trainer's last lines).
  if (store) await uploadLeftoverLogs(store, o.config, o.log);
  const base = await workerBase(o.config, o.log, `gpu-${o.pool}`);
  await failLostAttempts(base.deps.client, lost, o.log);
  const leases = new GpuLeases(devices, slots);
  const metrics = o.withMetrics ? createKilnMetrics(Runtime.instance(), o.pool, slots) : noMetrics;
  const deps: GpuDeps = {
    ...base.deps,
    pool: o.pool,
    gpus: leases,
    metrics,
    sampleGpus,
    // A GPU worker never opens the registry: the job carries its pinned paths (PreparedJob.pinned).
    registry: () => Promise.reject(new Error('a GPU worker does not open the model registry (only the control worker and the CLI do)')),
    isPinned: () => false,
    onTrainerStarted: o.onTrainerStarted,
    store,
  };
  o.log.info({ pool: o.pool, devices, slots }, devices.length ? 'GPU pool' : 'no GPU found (nvidia-smi absent or empty): running on CPU slots');
  const worker = await Worker.create({
    connection: base.connection,
    namespace: o.config.server.namespace,
    taskQueue: o.taskQueue ?? gpuTaskQueue(o.pool),
    identity: base.identity,
    activities: createGpuActivities(deps),
    maxConcurrentActivityTaskExecutions: slots,
    // Cancellation reaches an activity only in a heartbeat response: keep the throttle short.
    maxHeartbeatThrottleInterval: '500ms',
    defaultHeartbeatThrottleInterval: '500ms',
    // On SIGTERM, cancel running attempts at once: this is the wait *before* cancelling, not a grace
    // after it. The worker still waits for each trainer to checkpoint and exit (cancelGrace) before it stops.
    shutdownGraceTime: 0,
  });
  return {
    worker,
    close: async () => {
      await base.connection.close();
      store?.close();
    },
  };
}
