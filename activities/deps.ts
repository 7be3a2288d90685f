/**
 * What activities need from their worker process, injected by the worker (samples:
 * activities-dependency-injection). Tests build the same deps against a real server.
 */
import type { Client } from '@temporalio/client';
import type { KilnConfig } from '../src/config/load';
import type { GpuTelemetry } from '../src/shared/progress';
import type { Logger } from '../src/logger';
import type { ModelRegistry } from '../src/registry/types';
import type { GpuLeases } from '../src/supervisor/gpu';
import type { ObjectStore } from '../src/storage/types';

/** Kiln's own worker metrics; a no-op implementation where no exporter runs. */
export interface KilnMetrics {
  jobStarted(pool: string): void;
  jobEnded(pool: string, jobId: string): void;
  progress(jobId: string, stepsPerSec: number | null): void;
  sinceProgress(jobId: string, seconds: number): void;
  checkpoints(jobId: string, count: number, bytes: number): void;
  cancelled(pool: string): void;
  stalled(pool: string): void;
}

export const noMetrics: KilnMetrics = {
  jobStarted() {},
  jobEnded() {},
  progress() {},
  sinceProgress() {},
  checkpoints() {},
  cancelled() {},
  stalled() {},
};

export interface CommonDeps {
  config: KilnConfig;
  log: Logger;
  client: Client;
  workerId: string;
  /**
   * Opened lazily: a worker that never registers a version never opens the database. Only the
   * control worker (and the CLI) open it; a GPU worker's registry() refuses.
   */
  registry: () => Promise<ModelRegistry>;
  trainerArgv: (command: readonly string[]) => string[];
}

export interface GpuDeps extends CommonDeps {
  pool: string;
  gpus: GpuLeases;
  metrics: KilnMetrics;
  sampleGpus: (ids: string[]) => Promise<GpuTelemetry[] | null>;
  /** Pinned against retention; the train activity narrows it to the paths its job carries (PreparedJob.pinned). */
  isPinned: (path: string) => boolean;
  /**
   * The shared object store checkpoints go to (`storage.kind: s3`), opened and probed at worker start;
   * null for `kind: local`, where the checkpoint in the work dir is the stored copy (docs/reliability.md).
   */
  store?: ObjectStore | null;
  /** Test hook: called once a trainer process was spawned. */
  onTrainerStarted?: (jobId: string, attempt: number) => void;
}
