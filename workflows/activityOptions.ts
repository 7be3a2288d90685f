/**
 * The activity options both workflows schedule with, and the activity types their proxies are built from.
 * Not a workflow: workflows/index.ts does not export it.
 */
import { ActivityCancellationType, type ActivityOptions, type RetryPolicy } from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type * as activities from '../activities';
import { NON_RETRYABLE_TYPES } from '../src/shared/errors';
import { gpuTaskQueue } from '../src/shared/messages';
import type { PreparedJob } from '../src/shared/spec';

export type ControlActivities = ReturnType<typeof activities.createControlActivities>;
export type Activities = ControlActivities & ReturnType<typeof activities.createGpuActivities>;

/** Control activities (prepare, registry, client calls) ride out a control worker restart. */
export const CONTROL_RETRY: RetryPolicy = { maximumAttempts: 10, initialInterval: '1s', maximumInterval: '20s', nonRetryableErrorTypes: NON_RETRYABLE_TYPES };

/**
 * No taskQueue: control activities run on the workflow's own queue (kiln-control in production, a
 * unique queue per test). executeWithOptions replaces a proxy's options, so each call passes all of them.
 * Registry writes and client calls take milliseconds: a control worker that died mid-call is retried
 * after 30 s, not minutes.
 */
export function controlOptions(startToCloseTimeout: Duration = '30s'): ActivityOptions {
  return { startToCloseTimeout, retry: CONTROL_RETRY, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED };
}

/**
 * Control activities that find a dataset's version (prepareJob, checkRetrainNeed): a content hash may
 * take minutes, so they heartbeat every 2 s and a dead control worker is noticed in 10 s.
 */
export function datasetOptions(): ActivityOptions {
  return { ...controlOptions('1h'), heartbeatTimeout: '10s' };
}

/**
 * One train attempt. No scheduleToStart limit: a job may wait for a free GPU slot as long as it has to.
 * WAIT_CANCELLATION_COMPLETED: "cancelled" must mean the trainer process is really gone.
 */
export function trainOptions(p: PreparedJob): ActivityOptions {
  return {
    taskQueue: gpuTaskQueue(p.spec.pool),
    startToCloseTimeout: p.timeouts.startToCloseMs,
    heartbeatTimeout: p.timeouts.heartbeatMs,
    // One attempt per activity: the workflow decides what a failure costs (attempts.ts).
    retry: { maximumAttempts: 1 },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}

export function evaluateOptions(p: PreparedJob, taskQueue: string): ActivityOptions {
  return {
    taskQueue,
    startToCloseTimeout: p.evaluate.timeoutMs,
    heartbeatTimeout: p.timeouts.heartbeatMs,
    retry: { maximumAttempts: 3, initialInterval: '1s', nonRetryableErrorTypes: NON_RETRYABLE_TYPES },
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
}
