/**
 * Dataset versions for control activities: the resolver runs with a heartbeat every few seconds (a
 * content hash of a large dataset takes minutes; a dead control worker must still be noticed in
 * seconds), and its errors become the right failures: a refused dataset is bad input
 * (non-retryable InvalidJobSpec), an unavailable one is retried.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { KilnConfig } from '../src/config/load';
import { checkDataset, DatasetRefused, DatasetUnavailable, resolveDatasetVersion, type DatasetVersion } from '../src/datasets';
import { ErrorType } from '../src/shared/errors';

const HEARTBEAT_MS = 2000;

function failure(err: unknown): unknown {
  if (err instanceof DatasetRefused) return ApplicationFailure.nonRetryable(err.message, ErrorType.InvalidJobSpec, { problems: [`dataset: ${err.message}`] });
  if (err instanceof DatasetUnavailable) return ApplicationFailure.retryable(err.message, ErrorType.DatasetUnavailable);
  return err;
}

async function withHeartbeat<T>(fn: (beat: (d: unknown) => void) => Promise<T>): Promise<T> {
  const ctx = Context.current();
  let last: unknown = { resolving: true };
  const timer = setInterval(() => ctx.heartbeat(last), HEARTBEAT_MS);
  try {
    return await fn((d) => (last = d));
  } catch (err) {
    throw failure(err);
  } finally {
    clearInterval(timer);
  }
}

/** The dataset's version, found by its resolver (see src/datasets), heartbeating while it runs. */
export function datasetVersion(config: KilnConfig, dataset: string, model: string): Promise<DatasetVersion> {
  return withHeartbeat((beat) => resolveDatasetVersion(config, dataset, { model, onProgress: (done, total) => beat({ hashedBytes: done, totalBytes: total }) }));
}

/** Only checks that the dataset may be used (a caller brought its fingerprint). */
export function checkDatasetLocation(config: KilnConfig, dataset: string): Promise<void> {
  return withHeartbeat(() => checkDataset(config, dataset));
}
