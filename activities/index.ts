/**
 * Activity factories. Workflows import this module only as types.
 * - control worker (kiln-control): prepareJob, evaluate, registry, retrain and job-end activities;
 * - GPU workers (kiln-gpu-<pool>): train, evaluate.
 */
import type { CommonDeps, GpuDeps } from './deps';
import { createEvaluate } from './evaluate';
import { createJobEndActivities } from './jobEnd';
import { createPoolActivities } from './pools';
import { createPrepareJob } from './prepare';
import { createRegistryActivities, type RegistryHooks } from './registry';
import { createRetrainActivities } from './retrain';
import { createTrain } from './train';

export function createControlActivities(deps: CommonDeps, hooks: RegistryHooks = {}) {
  return {
    prepareJob: createPrepareJob(deps),
    evaluate: createEvaluate(deps),
    ...createRegistryActivities(deps, hooks),
    ...createRetrainActivities(deps),
    ...createJobEndActivities(deps),
    ...createPoolActivities(deps),
  };
}

export function createGpuActivities(deps: GpuDeps) {
  return {
    train: createTrain(deps),
    evaluate: createEvaluate(deps),
  };
}

export type { CommonDeps, GpuDeps, KilnMetrics } from './deps';
export { noMetrics } from './deps';
