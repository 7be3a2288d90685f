/**
 * With shared storage (`storage.kind: s3`), what else of an attempt must outlive its host: the model
 * artifact the trainer announced (uploaded, with each file's size and sha256, before the activity
 * returns, so evaluation and the registry on another host find it) and this attempt's part of
 * trainer.log (uploaded every few seconds while it runs and once at the end, for `kiln logs`).
 *
 *   jobs/<id>/artifacts/<name>/...            the model, in the checkpoint layout (files/, manifest.json, COMPLETE)
 *   jobs/<id>/logs/trainer/attempt-0001.log   the part of trainer.log attempt 1 wrote
 *
 * A worker that is SIGKILLed cannot upload its attempt's last lines (the shim's and the trainer's,
 * written after the last periodic upload). While an attempt's part is not fully uploaded, a marker
 * in the work dir (`trainer.log.upload.json`: attempt and offset) says so; the next GPU worker to
 * start on that host, or the job's next attempt there, uploads the rest (uploadLeftoverLogs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from '../../src/logger';
import { ErrorType } from '../../src/shared/errors';
import { logKey, uploadCheckpoint, uploadLog, uploadLogPeriodically, type ObjectStore } from '../../src/storage';
import { pidfileFor, readPidfile } from '../../src/supervisor/pidfiles';
import { artifactDir, trainerLogFile } from '../../src/supervisor/workdir';

/** The part of trainer.log an attempt on this host has not fully uploaded yet. */
interface PendingLog {
  attempt: number;
  from: number;
}
const pendingFile = (workDir: string) => path.join(workDir, 'trainer.log.upload.json');

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

/**
 * Starts uploading this attempt's part of trainer.log (from its current end, after uploading what an
 * earlier attempt on this host left); stop() uploads once more and clears the marker when it is all up.
 */
export async function startTrainerLogUpload(store: ObjectStore, o: { jobId: string; workDir: string; attempt: number; log: Logger }): Promise<{ stop(): Promise<void> }> {
  await uploadLeftoverLog(store, o.jobId, o.workDir, o.log);
  const file = trainerLogFile(o.workDir);
  const from = fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
  const marker: PendingLog = { attempt: o.attempt, from };
  try {
    fs.writeFileSync(pendingFile(o.workDir), JSON.stringify(marker));
  } catch (err) {
    o.log.warn({ err: String(err) }, 'cannot write the trainer.log upload marker: if this worker dies, its last log lines stay on this host');
  }
  let warned = false;
  const up = uploadLogPeriodically(
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
  return {
    stop: async () => {
      if (await up.stop()) fs.rmSync(pendingFile(o.workDir), { force: true });
      else o.log.warn({ attempt: o.attempt }, 'trainer.log is not fully in storage: the next GPU worker started on this host uploads the rest');
    },
  };
}

function readPending(workDir: string): PendingLog | null {
  try {
    const m = JSON.parse(fs.readFileSync(pendingFile(workDir), 'utf8')) as PendingLog;
    return Number.isInteger(m.attempt) && m.attempt > 0 && Number.isInteger(m.from) && m.from >= 0 ? m : null;
  } catch {
    return null;
  }
}

/** Uploads the rest of the attempt part a dead worker left in this job's trainer.log; true when there was one and it went up. */
export async function uploadLeftoverLog(store: ObjectStore, jobId: string, workDir: string, log: Logger): Promise<boolean> {
  const m = readPending(workDir);
  if (!m) {
    fs.rmSync(pendingFile(workDir), { force: true });
    return false;
  }
  const key = logKey(jobId, 'trainer', m.attempt);
  try {
    const up = await uploadLog(store, key, trainerLogFile(workDir), m.from);
    fs.rmSync(pendingFile(workDir), { force: true });
    log.info({ jobId, attempt: m.attempt, key, bytes: up?.bytes ?? 0 }, `uploaded the rest of attempt ${m.attempt}'s trainer.log, left on this host by a worker that stopped before it could`);
    return true;
  } catch (err) {
    log.warn({ jobId, attempt: m.attempt, err: String(err) }, `cannot upload the rest of attempt ${m.attempt}'s trainer.log (the local copy is complete; tried again at the next start)`);
    return false;
  }
}

/**
 * At GPU worker start (after orphaned trainers were reaped): every job folder on this host with a not
 * fully uploaded trainer.log part, except jobs whose trainer still runs here (another worker's attempt).
 */
export async function uploadLeftoverLogs(store: ObjectStore, config: { artifactsRoot: string; home: string }, log: Logger): Promise<number> {
  const jobs = path.join(config.artifactsRoot, 'jobs');
  let n = 0;
  for (const e of fs.existsSync(jobs) ? fs.readdirSync(jobs, { withFileTypes: true }) : []) {
    if (e.isDirectory() && fs.existsSync(pendingFile(path.join(jobs, e.name))) && !readPidfile(pidfileFor(config.home, e.name))) {
      if (await uploadLeftoverLog(store, e.name, path.join(jobs, e.name), log)) n += 1;
    }
  }
  return n;
}
