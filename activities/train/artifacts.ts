/**
 * With shared storage (`storage.kind: s3`), what else of an attempt must outlive its host: the model
 * artifact the trainer announced (uploaded, with each file's size and sha256, before the activity
 * returns, so evaluation and the registry on another host find it) and this attempt's part of
 * trainer.log (uploaded every few seconds while it runs and once at the end, for `kiln logs`).
 *
 *   jobs/<id>/artifacts/<name>/...            the model, in the checkpoint layout (files/, manifest.json, COMPLETE)
 *   jobs/<id>/logs/trainer/attempt-0001.log   the part of trainer.log attempt 1 wrote
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from '../../src/logger';
import { ErrorType } from '../../src/shared/errors';
import { logKey, uploadCheckpoint, uploadLogPeriodically, type ObjectStore } from '../../src/storage';
import { artifactDir, trainerLogFile } from '../../src/supervisor/workdir';

const TRIES = 3;
/** How often a running attempt's log goes up (only when it changed). */
export const LOG_UPLOAD_MS = 5000;

/** `jobs/<id>/artifacts/model.json`: by its path under the job's artifacts folder, else by its name. */
export function artifactPrefix(jobId: string, workDir: string, localPath: string): string {
  const rel = path.relative(artifactDir(workDir), localPath);
  const name = !rel || rel.startsWith('..') || path.isAbsolute(rel) ? path.basename(localPath) : rel.split(path.sep).join('/');
  return `jobs/${jobId}/artifacts/${name}`;
}

/**
 * Uploads the model artifact and returns its storage URI. Retried a few times; then the attempt fails
 * retryably (StorageUnavailable): a job is never reported trained with a model only this host has.
 */
export async function uploadModel(store: ObjectStore, o: { jobId: string; workDir: string; modelPath: string; log: Logger; concurrency: number }): Promise<string> {
  const prefix = artifactPrefix(o.jobId, o.workDir, o.modelPath);
  let last = '';
  for (let n = 1; n <= TRIES; n++) {
    try {
      const up = await uploadCheckpoint(store, prefix, o.modelPath, { concurrency: o.concurrency });
      const uri = `${store.uri}/${prefix}`;
      o.log.info({ uri, bytes: up.manifest.bytes, files: up.manifest.files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 })), ms: up.ms }, 'model artifact uploaded and verified');
      return uri;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
      o.log.warn({ try: n, of: TRIES, err: last }, n < TRIES ? 'model artifact upload failed; retrying' : 'model artifact upload failed');
      if (n < TRIES) await new Promise((r) => setTimeout(r, 1000 * 2 ** (n - 1)));
    }
  }
  throw ApplicationFailure.retryable(`cannot upload the model artifact ${o.modelPath} to ${store.uri}/${prefix}: ${last}`, ErrorType.StorageUnavailable);
}

/** Starts uploading this attempt's part of trainer.log (from its current end); stop() uploads once more. */
export function startTrainerLogUpload(store: ObjectStore, o: { jobId: string; workDir: string; attempt: number; log: Logger }): { stop(): Promise<void> } {
  const file = trainerLogFile(o.workDir);
  const from = fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
  let warned = false;
  return uploadLogPeriodically(
    store,
    logKey(o.jobId, 'trainer', o.attempt),
    file,
    LOG_UPLOAD_MS,
    (err) => {
      if (!warned) o.log.warn({ err: String(err) }, 'cannot upload trainer.log to storage (retrying every few seconds; the local copy is complete)');
      warned = true;
    },
    from,
  );
}
