/**
 * Checkpoints into shared storage (`storage.kind: s3`). The trainer writes to the local
 * KILN_CHECKPOINT_DIR as always; each announced checkpoint is queued here and uploaded in the
 * background, one checkpoint at a time (its files and parts in parallel, `storage.concurrency`), so
 * the trainer keeps training and writing the next one while heartbeats keep flowing. A checkpoint
 * becomes verified (resumable, in heartbeat details and the manifest, counted by retention) only when
 * uploadCheckpoint has put every file, the manifest and, last, the completion marker. When the
 * trainer checkpoints faster than the store takes them, a waiting checkpoint that newer ones already
 * push out of retention is never uploaded and its local copy goes at once, so local disk stays bounded.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../../src/logger';
import type { CheckpointRef } from '../../src/shared/progress';
import { deleteCheckpoint, ObjectNotFound, uploadCheckpoint, type ObjectStore } from '../../src/storage';

/** Upload tries per checkpoint before it is given up (not a resume point; the next one will be). */
const TRIES = 3;

/** `jobs/<jobId>/checkpoints/model-600.pt`: the checkpoint's place in the store, by its path in the work dir. */
export function checkpointPrefix(jobId: string, workDir: string, localPath: string): string {
  const rel = path.relative(workDir, localPath).split(path.sep).join('/');
  return `jobs/${jobId}/${rel}`;
}

/** Where a stored checkpoint goes in this host's work dir (its path relative to the work dir, from its key). */
export function localPathOf(jobId: string, workDir: string, ref: CheckpointRef, store: ObjectStore): string | null {
  const key = ref.uri?.startsWith(`${store.uri}/`) ? ref.uri.slice(store.uri.length + 1) : null;
  const head = `jobs/${jobId}/`;
  if (!key?.startsWith(head)) return null;
  const rel = key.slice(head.length).split('/');
  if (rel.some((s) => !s || s === '.' || s === '..')) return null;
  return path.join(workDir, ...rel);
}

export function manifestKey(jobId: string): string {
  return `jobs/${jobId}/checkpoints.json`;
}

/** The job's manifest in storage: the verified checkpoints retention kept. Empty when absent or unreadable. */
export async function readStoredManifest(store: ObjectStore, jobId: string, log: Logger): Promise<CheckpointRef[]> {
  try {
    const m = JSON.parse((await store.get(manifestKey(jobId))).body.toString('utf8')) as { checkpoints?: CheckpointRef[] };
    return Array.isArray(m.checkpoints) ? m.checkpoints.filter((c) => typeof c?.uri === 'string' && Number.isInteger(c.step)) : [];
  } catch (err) {
    if (!(err instanceof ObjectNotFound)) log.warn({ err: String(err) }, 'cannot read the job manifest from storage');
    return [];
  }
}

export interface UploadState {
  step: number;
  doneBytes: number;
  totalBytes: number;
  queued: number;
}

/** Checkpoints given up after TRIES failed uploads, for heartbeat details and the status line. */
export interface UploadFailures {
  count: number;
  /** The last one given up: its step, the last error, and whether its local copy was deleted. */
  last: { step: number; tries: number; error: string; localDeleted: boolean };
}

export class CheckpointUploader {
  private readonly queue: CheckpointRef[] = [];
  private running: Promise<void> | null = null;
  /** The upload in flight, for heartbeat details and the status line. */
  state: UploadState | null = null;
  /** Waiting checkpoints dropped unsent: newer ones pushed them out of retention. */
  skipped = 0;
  private inFlight: CheckpointRef | null = null;
  /** Checkpoints given up after TRIES failed uploads (never resume points; their local copies are swept). */
  failures: UploadFailures | null = null;
  /** The last upload error of the checkpoint in flight. */
  private lastError = '';

  constructor(
    private readonly store: ObjectStore,
    private readonly o: {
      jobId: string;
      workDir: string;
      log: Logger;
      concurrency: number;
      /** False once a newer attempt owns the job: nothing more is uploaded or recorded. */
      stillOwner: () => boolean;
      /**
       * Asks the store now (the lease object), right before an upload starts and before it is marked
       * complete: an attempt frozen past a takeover may still think it owns the job. Throws when it
       * cannot tell (a failed try).
       */
      confirmOwner?: () => Promise<boolean>;
      /** A disk error while recording a verified checkpoint: fails the attempt (as a trainer event's would). */
      onError: (err: unknown) => void;
    },
  ) {}

  /** Called with each verified checkpoint (its `uri` set); set by the event handler. */
  onVerified: (ref: CheckpointRef) => Promise<void> = async () => {};
  /** Called before a checkpoint's upload starts: retires what it will push out of retention. */
  beforeUpload: (ref: CheckpointRef) => Promise<void> = async () => {};
  /** Of the waiting checkpoints, those retention drops given the newer ones (set by the event handler). */
  supersededInQueue: (queued: readonly CheckpointRef[], inFlight: CheckpointRef | null) => CheckpointRef[] = () => [];
  /** Whether a given-up checkpoint's local copy must stay (pinned, or kept under the same path); set by the event handler. */
  keepLocal: (ref: CheckpointRef) => boolean = () => false;

  enqueue(ref: CheckpointRef): void {
    this.queue.push(ref);
    this.skipSuperseded();
    if (this.state) this.state.queued = this.queue.length;
    this.running ??= this.loop().finally(() => {
      this.running = null;
    });
  }

  /** Waiting checkpoints that would be deleted right after their upload are not uploaded; their local copies go now. */
  private skipSuperseded(): void {
    const newest = this.queue[this.queue.length - 1];
    const skip = new Set(this.supersededInQueue([...this.queue], this.inFlight).filter((c) => c !== newest && this.queue.includes(c)));
    if (!skip.size) return;
    for (let i = this.queue.length - 1; i >= 0; i--) if (skip.has(this.queue[i]!)) this.queue.splice(i, 1);
    for (const c of skip) fs.rmSync(c.path, { recursive: true, force: true });
    this.skipped += skip.size;
    this.o.log.info(
      { skipped: [...skip].map((c) => c.step), uploading: this.inFlight?.step ?? null, waiting: this.queue.map((c) => c.step) },
      'the trainer checkpoints faster than storage takes them: waiting checkpoints that newer ones push out of retention are not uploaded; local copies deleted',
    );
  }

  /** Resolves once every queued checkpoint is verified or given up. */
  async drain(): Promise<void> {
    while (this.running) await this.running;
  }

  private async loop(): Promise<void> {
    for (let ref = this.queue.shift(); ref; ref = this.queue.shift()) {
      this.inFlight = ref;
      try {
        await this.uploadOne(ref);
      } finally {
        this.inFlight = null;
      }
    }
    this.state = null;
  }

  private async uploadOne(ref: CheckpointRef): Promise<void> {
    const { jobId, workDir } = this.o;
    const prefix = checkpointPrefix(jobId, workDir, ref.path);
    // In progress from here (retiring what it pushes out of retention is its first part).
    this.state = { step: ref.step, doneBytes: 0, totalBytes: 0, queued: this.queue.length };
    // Asked of the store first: retiring old checkpoints rewrites the job manifest and deletes objects,
    // which an attempt that lost the job (its worker frozen past a takeover) must not do.
    const owner = await this.ownerNow().catch(() => null);
    if (owner === false) {
      this.notUploaded(ref);
      return;
    }
    try {
      // Cannot tell (the lease object unreadable): nothing is retired now; the upload tries ask again.
      if (owner) await this.beforeUpload(ref);
    } catch (err) {
      this.o.onError(err);
      return;
    }
    const uri = await this.tryUpload(ref, prefix);
    // Verified: no longer "uploading" in what the next heartbeat and report say.
    this.state = this.queue.length ? { step: this.queue[0]!.step, doneBytes: 0, totalBytes: 0, queued: this.queue.length - 1 } : null;
    if (uri === 'superseded') return;
    if (uri === null) {
      if (this.lastError) this.giveUp(ref, this.lastError);
      return;
    }
    if (!this.o.stillOwner()) return;
    try {
      await this.onVerified({ ...ref, uri });
    } catch (err) {
      this.o.onError(err);
    }
  }

  /** Whether this attempt still owns the job, by the last poll and, where wired, the store now. Throws when it cannot tell. */
  private async ownerNow(): Promise<boolean> {
    return this.o.stillOwner() && (this.o.confirmOwner ? await this.o.confirmOwner() : true);
  }

  private notUploaded(ref: CheckpointRef): 'superseded' {
    this.o.log.warn({ step: ref.step, path: ref.path }, 'a newer attempt owns this job: checkpoint not uploaded (this attempt stores nothing more)');
    this.state = null;
    return 'superseded';
  }

  /** Up to TRIES uploads of one checkpoint: its URI once verified, null when given up, 'superseded' when a newer attempt owns the job. */
  private async tryUpload(ref: CheckpointRef, prefix: string): Promise<string | null | 'superseded'> {
    const { log } = this.o;
    const superseded = () => this.notUploaded(ref);
    const owner = () => this.ownerNow();
    this.lastError = '';
    for (let n = 1; n <= TRIES; n++) {
      if (!this.o.stillOwner()) return superseded();
      if (!fs.existsSync(ref.path)) {
        log.warn({ step: ref.step, path: ref.path }, 'checkpoint vanished before it was uploaded: not a resume point');
        this.lastError = '';
        return null;
      }
      this.state = { step: ref.step, doneBytes: 0, totalBytes: 0, queued: this.queue.length };
      let lost = false;
      try {
        if (!(await owner())) return superseded();
        const up = await uploadCheckpoint(this.store, prefix, ref.path, {
          concurrency: this.o.concurrency,
          onProgress: (done, total) => {
            if (this.state) Object.assign(this.state, { doneBytes: done, totalBytes: total, queued: this.queue.length });
          },
          beforeComplete: async () => {
            lost = !(await owner());
            if (lost) throw new Error('superseded before the checkpoint was marked complete');
          },
        });
        const uri = `${this.store.uri}/${prefix}`;
        log.info({ step: ref.step, uri, bytes: up.manifest.bytes, files: up.manifest.files.length, ms: up.ms }, 'checkpoint uploaded and verified');
        return uri;
      } catch (err) {
        if (lost) return superseded();
        this.lastError = err instanceof Error ? err.message : String(err);
        log.warn({ step: ref.step, try: n, of: TRIES, err: this.lastError }, n < TRIES ? 'checkpoint upload failed; retrying' : 'checkpoint upload failed: it is not a resume point');
        if (n < TRIES) await new Promise((r) => setTimeout(r, 1000 * 2 ** (n - 1)));
      }
    }
    return null;
  }

  /**
   * A checkpoint whose uploads all failed is not a resume point and is not counted by retention, so
   * its local copy would stay forever: it is deleted (unless pinned), and the status line says so.
   */
  private giveUp(ref: CheckpointRef, error: string): void {
    let localDeleted = false;
    if (!this.keepLocal(ref)) {
      try {
        fs.rmSync(ref.path, { recursive: true, force: true });
        localDeleted = true;
      } catch (err) {
        this.o.log.warn({ step: ref.step, path: ref.path, err: String(err) }, 'cannot delete the local copy of a checkpoint that was not stored');
      }
    }
    this.failures = { count: (this.failures?.count ?? 0) + 1, last: { step: ref.step, tries: TRIES, error: error.slice(0, 500), localDeleted } };
    this.o.log.warn(
      { step: ref.step, path: ref.path, tries: TRIES, err: error, localDeleted },
      localDeleted ? `checkpoint step ${ref.step} not stored after ${TRIES} upload tries: not a resume point; its local copy was deleted` : `checkpoint step ${ref.step} not stored after ${TRIES} upload tries: not a resume point; its local copy is kept (pinned)`,
    );
  }

  /** Removes checkpoints retention dropped from storage (marker first); a failure is only logged. */
  async deleteStored(refs: CheckpointRef[]): Promise<void> {
    for (const d of refs) {
      if (!d.uri?.startsWith(`${this.store.uri}/`)) continue;
      try {
        await deleteCheckpoint(this.store, d.uri.slice(this.store.uri.length + 1));
      } catch (err) {
        this.o.log.warn({ step: d.step, uri: d.uri, err: String(err) }, 'cannot delete a checkpoint retention dropped from storage');
      }
    }
  }

  /** Writes the job's manifest to storage, so an attempt on any host finds the resume point. */
  async writeManifest(keep: CheckpointRef[]): Promise<void> {
    await this.store.put(manifestKey(this.o.jobId), Buffer.from(JSON.stringify({ checkpoints: keep }, null, 1)));
  }
}
