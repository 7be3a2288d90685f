/**
 * With shared storage (`storage.kind: s3`), what else of an attempt must outlive its host: the model
 * artifact the trainer announced and every other file of the job's artifacts folder (uploaded, with
 * each file's size and sha256, before the activity returns, so evaluation and the registry on another
 * host find them) and this attempt's part of
 * trainer.log (uploaded every few seconds while it runs and once at the end, for `kiln logs`).
 *
 *   jobs/<id>/artifacts/<name>/...            the model and each other entry of artifacts/, in the checkpoint layout (files/, manifest.json, COMPLETE)
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
import type { StoredArtifact } from '../../src/shared/summary';
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
/** Files of one artifact recorded in the registry (the manifest in storage lists them all). */
const MAX_FILES = 1000;
/** How often a running attempt's log goes up (only when it changed). */
export const LOG_UPLOAD_MS = 5000;

/** `jobs/<id>/artifacts/model.json`: by its path under the job's artifacts folder, else by its name. */
export function artifactPrefix(jobId: string, workDir: string, localPath: string): string {
  const rel = path.relative(artifactDir(workDir), localPath);
  const name = !rel || rel.startsWith('..') || path.isAbsolute(rel) ? path.basename(localPath) : rel.split(path.sep).join('/');
  return `jobs/${jobId}/artifacts/${name}`;
}

/** Uploads one artifact (a file or a folder) under `prefix`, a few tries; the last error is thrown. */
async function uploadOne(store: ObjectStore, prefix: string, local: string, o: { log: Logger; concurrency: number; what: string }): Promise<StoredArtifact> {
  let last = '';
  for (let n = 1; n <= TRIES; n++) {
    try {
      const up = await uploadCheckpoint(store, prefix, local, { concurrency: o.concurrency });
      const uri = `${store.uri}/${prefix}`;
      const files = up.manifest.files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 }));
      o.log.info({ uri, bytes: up.manifest.bytes, files, ms: up.ms }, `${o.what} uploaded and verified`);
      return { name: prefix.slice(prefix.indexOf('/artifacts/') + '/artifacts/'.length), uri, bytes: up.manifest.bytes, files: files.slice(0, MAX_FILES) };
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
      o.log.warn({ try: n, of: TRIES, err: last, path: local }, n < TRIES ? `${o.what} upload failed; retrying` : `${o.what} upload failed`);
      if (n < TRIES) await new Promise((r) => setTimeout(r, 1000 * 2 ** (n - 1)));
    }
  }
  throw new Error(last);
}

/**
 * Uploads the model artifact and every other entry of the job's artifacts folder (each file or
 * folder in the checkpoint layout, with each file's size and sha256), and returns the model's URI and
 * the list. Retried a few times; then the attempt fails retryably (StorageUnavailable): a job is never
 * reported trained with a model or artifact only this host has.
 */
export async function uploadArtifacts(store: ObjectStore, o: { jobId: string; workDir: string; modelPath: string; log: Logger; concurrency: number }): Promise<{ modelUri: string; artifacts: StoredArtifact[] }> {
  const dir = artifactDir(o.workDir);
  const others = (fs.existsSync(dir) ? fs.readdirSync(dir) : [])
    .sort()
    .map((name) => path.join(dir, name))
    .filter((p) => p !== o.modelPath && !p.endsWith('.tmp') && fs.statSync(p, { throwIfNoEntry: false }) !== undefined);
  const todo = [{ local: o.modelPath, what: 'model artifact' }, ...others.map((local) => ({ local, what: 'artifact' }))];
  const artifacts: StoredArtifact[] = [];
  for (const t of todo) {
    const prefix = artifactPrefix(o.jobId, o.workDir, t.local);
    try {
      artifacts.push(await uploadOne(store, prefix, t.local, { log: o.log, concurrency: o.concurrency, what: t.what }));
    } catch (err) {
      throw ApplicationFailure.retryable(`cannot upload the ${t.what} ${t.local} to ${store.uri}/${prefix}: ${(err as Error).message}`, ErrorType.StorageUnavailable);
    }
  }
  return { modelUri: artifacts[0]!.uri, artifacts };
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
