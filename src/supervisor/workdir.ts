/**
 * A job's work dir, `<artifacts.root>/jobs/<jobId>/`: its layout, the checkpoint manifest, the lease
 * that fences stale attempts out of it, and the choice of the checkpoint an attempt resumes from.
 *
 *   job.json          the prepared spec (prepareJob)
 *   lease.json        the attempt that owns the dir (WorkDirLease)
 *   checkpoints.json  announced checkpoints that retention kept (the manifest)
 *   checkpoints/      the trainer's KILN_CHECKPOINT_DIR
 *   artifacts/        the trainer's KILN_ARTIFACT_DIR
 *   trainer.log       trainer stdout/stderr, one `=== kiln: attempt …` header per attempt; capped and
 *                     rotated by the shim (trainer.log.1 …)
 *   journal/          per attempt, the checkpoint events its shim saw (`<gen>-<attempt>.jsonl`)
 *   evaluate.log      the evaluation command's stdout/stderr
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Info } from '@temporalio/activity';
import type { Logger } from '../logger';
import { isSkipped, type CheckpointRef, type SkippedCheckpoint, type SkipRef, type TrainHeartbeat } from '../shared/progress';
import { checkpointMismatch, type DigestOptions } from './checkpointDigest';
import { diskBytes } from './retention';
import { readJournal, writeFileAtomic } from './shimio';

export function jobWorkDir(artifactsRoot: string, jobId: string): string {
  return path.join(artifactsRoot, 'jobs', jobId);
}
export function checkpointDir(workDir: string): string {
  return path.join(workDir, 'checkpoints');
}
export function artifactDir(workDir: string): string {
  return path.join(workDir, 'artifacts');
}
export function trainerLogFile(workDir: string): string {
  return path.join(workDir, 'trainer.log');
}
export function evaluateLogFile(workDir: string): string {
  return path.join(workDir, 'evaluate.log');
}
export function jobFile(workDir: string): string {
  return path.join(workDir, 'job.json');
}
export function manifestFile(workDir: string): string {
  return path.join(workDir, 'checkpoints.json');
}
export function leaseFile(workDir: string): string {
  return path.join(workDir, 'lease.json');
}
export function journalDir(workDir: string): string {
  return path.join(workDir, 'journal');
}
/** The attempt's journal: named by its lease generation, so journals sort by attempt age. */
export function journalFile(workDir: string, gen: number, attempt: number): string {
  return path.join(journalDir(workDir), `${gen}-${attempt}.jsonl`);
}

/**
 * The line each attempt writes to trainer.log before its trainer starts:
 * `=== kiln: attempt N on <worker> at <ISO>[, resuming from step S (<path>)]; CUDA_VISIBLE_DEVICES=… ===`.
 * Tests and benchmarks read attempt start times from it.
 */
export function attemptHeader(o: { attempt: number; workerId: string; resumedFrom: CheckpointRef | null; gpuIds: readonly string[] }): string {
  const resuming = o.resumedFrom ? `, resuming from step ${o.resumedFrom.step} (${o.resumedFrom.path})` : '';
  return `\n=== kiln: attempt ${o.attempt} on ${o.workerId} at ${new Date().toISOString()}${resuming}; CUDA_VISIBLE_DEVICES=${o.gpuIds.join(',')} ===\n`;
}

/** True if `p` resolves inside `dir` (after symlinks), so a trainer cannot point Kiln outside the job. */
export function insideDir(dir: string, p: string): boolean {
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch {
    real = path.resolve(p);
  }
  let base: string;
  try {
    base = fs.realpathSync(dir);
  } catch {
    base = path.resolve(dir);
  }
  const rel = path.relative(base, real);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

export function readManifest(workDir: string): CheckpointRef[] {
  try {
    const m = JSON.parse(fs.readFileSync(manifestFile(workDir), 'utf8')) as { checkpoints: CheckpointRef[] };
    return Array.isArray(m.checkpoints) ? m.checkpoints : [];
  } catch {
    return [];
  }
}

export function writeManifest(workDir: string, checkpoints: CheckpointRef[]): void {
  writeFileAtomic(manifestFile(workDir), `${manifestFile(workDir)}.${process.pid}.tmp`, JSON.stringify({ checkpoints }, null, 1));
}

/**
 * The work dir's owner: the newest attempt that started. `gen` orders attempts across retries, pause →
 * resume (a new activity, whose attempt count restarts at 1) and workflow runs.
 */
export interface LeaseRecord {
  token: string;
  gen: number;
  attempt: number;
  workerId: string;
  at: string;
}

/** When the server scheduled this attempt: later for every retry, every resume and every new run. */
export function generationOf(info: Pick<Info, 'currentAttemptScheduledTimestampMs' | 'scheduledTimestampMs'>): number {
  return info.currentAttemptScheduledTimestampMs || info.scheduledTimestampMs || Date.now();
}

function readLease(workDir: string): LeaseRecord | null {
  try {
    const l = JSON.parse(fs.readFileSync(leaseFile(workDir), 'utf8')) as Partial<LeaseRecord>;
    return typeof l.token === 'string' ? { token: l.token, gen: Number(l.gen) || 0, attempt: Number(l.attempt) || 0, workerId: String(l.workerId ?? '?'), at: String(l.at ?? '') } : null;
  } catch {
    return null;
  }
}

function writeLease(workDir: string, l: LeaseRecord): void {
  writeFileAtomic(leaseFile(workDir), `${leaseFile(workDir)}.${process.pid}.${l.token.slice(0, 8)}.tmp`, JSON.stringify(l));
}

/**
 * The fence around a work dir. The newest attempt owns it: it writes the lease, and an older attempt
 * that wakes up (SIGCONT, network back) sees it, stops its trainer, and stops touching the manifest.
 */
export class WorkDirLease {
  /** The attempt that owns `workDir` now, if any. */
  static owner(workDir: string): LeaseRecord | null {
    return readLease(workDir);
  }

  /** Takes the work dir over for this attempt. */
  static take(workDir: string, o: { gen: number; attempt: number; workerId: string }): WorkDirLease {
    const lease = new WorkDirLease(workDir, { token: crypto.randomUUID(), gen: o.gen, attempt: o.attempt, workerId: o.workerId, at: new Date().toISOString() });
    writeLease(workDir, lease.record);
    return lease;
  }

  private constructor(
    readonly workDir: string,
    readonly record: LeaseRecord,
  ) {}

  get token(): string {
    return this.record.token;
  }

  /** A second fence, for hosts that share no disk (the lease object in storage): true once a newer attempt holds it. */
  remote: (() => boolean) | null = null;

  /** True once a newer attempt took the work dir over (here, or on any host through `remote`). */
  superseded(): boolean {
    if (this.remote?.()) return true;
    const l = readLease(this.workDir);
    if (!l || l.token === this.record.token) return false;
    if (l.gen >= this.record.gen) return true;
    // An older attempt wrote over our lease (it read the file before we wrote ours): take it back.
    writeLease(this.workDir, this.record);
    return false;
  }
}

/**
 * Takeover cleanup: checkpoints an earlier attempt wrote but never got to announce (its worker died or
 * froze before handling the event, or the write was torn) are not resumable, and retention never saw
 * them. Only entries named like an announced checkpoint (digits aside) or its temp file are removed,
 * so other files a trainer keeps in the checkpoint dir (e.g. TensorBoard runs/) stay.
 */
function sweepUnannounced(ckptDir: string, known: CheckpointRef[], keep: (p: string) => boolean): string[] {
  const esc = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const shapes = new Set<string>();
  const knownPaths = new Set(known.map((c) => path.resolve(c.path)));
  const shape = (t: string) => esc(t).replace(/\d+/g, '\\d+');
  for (const c of known) {
    if (path.dirname(path.resolve(c.path)) !== path.resolve(ckptDir)) continue;
    const base = path.basename(c.path);
    const ext = path.extname(base);
    // The name itself and the old kit's temp (`.round-10.json.tmp-…`); the kit's temp with the suffix
    // last (`.round-10.tmp-<pid>-<hex>.json`, plus a suffix a writer appended: np.save's `.npy`) and
    // its `.old-<hex>` backup.
    shapes.add(`\\.?${shape(base)}(?:\\.tmp.*)?`);
    shapes.add(`\\.${shape(base.slice(0, base.length - ext.length))}\\.(?:tmp-\\d+-[0-9a-f]+|old-[0-9a-f]+)${esc(ext)}(?:\\.[A-Za-z0-9]+)?`);
  }
  if (shapes.size === 0) return [];
  const re = new RegExp(`^(?:${[...shapes].join('|')})$`);
  const removed: string[] = [];
  let names: string[] = [];
  try {
    names = fs.readdirSync(ckptDir);
  } catch {
    return [];
  }
  for (const n of names) {
    const full = path.join(ckptDir, n);
    if (!re.test(n) || knownPaths.has(full) || keep(full)) continue;
    fs.rmSync(full, { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

/**
 * Checkpoints earlier attempts' shims journaled while the lease was theirs, in journals whose shim lost
 * its worker (died, froze), that are complete: inside the job dir, on disk, with the size the shim saw.
 */
function journaledCheckpoints(workDir: string, beforeGen: number, log: Logger): CheckpointRef[] {
  let names: string[];
  try {
    names = fs.readdirSync(journalDir(workDir)).filter((n) => n.endsWith('.jsonl') && Number(n.split('-')[0]) < beforeGen);
  } catch {
    return [];
  }
  const out: CheckpointRef[] = [];
  for (const n of names) {
    const j = readJournal(path.join(journalDir(workDir), n));
    if (!j.lost) continue;
    for (const e of j.entries) {
      if (!insideDir(workDir, e.path) || !fs.existsSync(e.path)) continue;
      if (e.bytes !== null && diskBytes(e.path) !== e.bytes) {
        log.warn({ path: e.path, step: e.step, journaled: e.bytes, onDisk: diskBytes(e.path) }, 'journaled checkpoint changed size since it was announced; not adopted');
        continue;
      }
      out.push({ step: e.step, path: e.path, metrics: e.metrics });
    }
  }
  return out;
}

/** Removes the journals of attempts older than `beforeGen` (their checkpoints are in the manifest now). */
export function dropJournals(workDir: string, beforeGen: number): void {
  let names: string[];
  try {
    names = fs.readdirSync(journalDir(workDir));
  } catch {
    return;
  }
  for (const n of names) if (Number(n.split('-')[0]) < beforeGen) fs.rmSync(path.join(journalDir(workDir), n), { force: true });
}

export interface ResumePoint {
  /** The newest announced checkpoint that still exists inside the work dir, or null. */
  resumedFrom: CheckpointRef | null;
  /** Every announced checkpoint that still exists inside the work dir, oldest first. */
  checkpoints: CheckpointRef[];
  /** Checkpoints adopted from earlier attempts' journals that the manifest did not have. */
  adopted: CheckpointRef[];
  /** Newer checkpoints stepped over: changed on disk since they were verified. */
  skipped?: SkippedCheckpoint[];
}

/**
 * Where an attempt resumes: the newest checkpoint announced in the manifest, the heartbeat details of
 * an earlier attempt, or the pause checkpoint, that still exists; falling back to the previous one
 * when the newest is missing. Sweeps checkpoints that were never announced first.
 */
export async function chooseResumePoint(
  workDir: string,
  o: { heartbeat: TrainHeartbeat | null; resumeFrom: CheckpointRef | null; isPinned: (p: string) => boolean; log: Logger; gen: number; skip?: readonly SkipRef[]; maxStep?: number; onHashing?: DigestOptions['onProgress'] },
): Promise<ResumePoint> {
  const { log } = o;
  const known = new Map<string, CheckpointRef>();
  for (const c of [...readManifest(workDir), ...(o.heartbeat?.checkpoints ?? []), ...(o.resumeFrom ? [o.resumeFrom] : [])]) {
    // Whichever record of a checkpoint carries its verified size and sha256 keeps them.
    const prev = known.get(c.path);
    known.set(c.path, c.bytes === undefined && prev?.bytes !== undefined ? { ...c, bytes: prev.bytes, sha256: prev.sha256 } : c);
  }
  const adopted: CheckpointRef[] = [];
  for (const c of journaledCheckpoints(workDir, o.gen, log)) {
    if (known.has(c.path)) continue;
    known.set(c.path, c);
    adopted.push(c);
  }
  const candidates = [...known.values()].sort((a, b) => b.step - a.step);
  const swept = sweepUnannounced(checkpointDir(workDir), candidates, o.isPinned);
  if (swept.length) log.warn({ removed: swept }, 'removed checkpoints an earlier attempt wrote but never announced');
  let resumedFrom: CheckpointRef | null = null;
  const skipped: SkippedCheckpoint[] = [];
  for (const c of candidates) {
    if (!insideDir(workDir, c.path)) {
      log.warn({ path: c.path }, 'ignoring a resume checkpoint outside the job dir');
      continue;
    }
    if (!fs.existsSync(c.path)) {
      log.warn({ path: c.path, step: c.step }, 'checkpoint to resume from is missing; trying the previous one');
      continue;
    }
    if (o.maxStep !== undefined && c.step > o.maxStep) {
      log.warn({ path: c.path, step: c.step }, `checkpoint is newer than step ${o.maxStep}, where kiln retry --from-checkpoint went back to; not resuming from it`);
      continue;
    }
    const suspect = isSkipped(c, o.skip);
    if (suspect) {
      log.warn({ path: c.path, step: c.step, quarantined: suspect.quarantined }, `checkpoint is ${suspect.quarantined ? 'quarantined' : 'suspect'} (an earlier attempt failed right after resuming from it); trying the previous one`);
      continue;
    }
    const problem = await checkpointMismatch(c.path, c, { onProgress: o.onHashing });
    if (problem) {
      log.warn({ path: c.path, step: c.step, problem }, 'checkpoint changed since it was verified; not resuming from it, trying the previous one');
      skipped.push({ step: c.step, path: c.path, problem });
      continue;
    }
    resumedFrom = c;
    break;
  }
  const bad = new Set(skipped.map((s) => s.path));
  const checkpoints = candidates.filter((c) => fs.existsSync(c.path) && insideDir(workDir, c.path) && !bad.has(c.path)).sort((a, b) => a.step - b.step);
  return { resumedFrom, checkpoints, adopted, skipped };
}
