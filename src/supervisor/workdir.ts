/**
 * A job's work dir, `<artifacts.root>/jobs/<jobId>/`: its layout, the checkpoint manifest, the lease
 * that fences stale attempts out of it, and the choice of the checkpoint an attempt resumes from.
 *
 *   job.json          the prepared spec (prepareJob)
 *   lease.json        the attempt that owns the dir (WorkDirLease)
 *   checkpoints.json  announced checkpoints that retention kept (the manifest)
 *   checkpoints/      the trainer's KILN_CHECKPOINT_DIR
 *   artifacts/        the trainer's KILN_ARTIFACT_DIR
 *   trainer.log       trainer stdout/stderr, one `=== kiln: attempt …` header per attempt
 *   evaluate.log      the evaluation command's stdout/stderr
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Info } from '@temporalio/activity';
import type { Logger } from '../logger';
import type { CheckpointRef, TrainHeartbeat } from '../shared/progress';

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
  const tmp = `${manifestFile(workDir)}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ checkpoints }, null, 1));
  fs.renameSync(tmp, manifestFile(workDir));
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
  const tmp = `${leaseFile(workDir)}.${process.pid}.${l.token.slice(0, 8)}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(l));
  fs.renameSync(tmp, leaseFile(workDir));
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

  /** True once a newer attempt took the work dir over. */
  superseded(): boolean {
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
  for (const c of known) {
    if (path.dirname(path.resolve(c.path)) === path.resolve(ckptDir)) shapes.add(esc(path.basename(c.path)).replace(/\d+/g, '\\d+'));
  }
  if (shapes.size === 0) return [];
  const re = new RegExp(`^\\.?(?:${[...shapes].join('|')})(?:\\.tmp.*)?$`);
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

export interface ResumePoint {
  /** The newest announced checkpoint that still exists inside the work dir, or null. */
  resumedFrom: CheckpointRef | null;
  /** Every announced checkpoint that still exists inside the work dir, oldest first. */
  checkpoints: CheckpointRef[];
}

/**
 * Where an attempt resumes: the newest checkpoint announced in the manifest, the heartbeat details of
 * an earlier attempt, or the pause checkpoint, that still exists; falling back to the previous one
 * when the newest is missing. Sweeps checkpoints that were never announced first.
 */
export function chooseResumePoint(
  workDir: string,
  o: { heartbeat: TrainHeartbeat | null; resumeFrom: CheckpointRef | null; isPinned: (p: string) => boolean; log: Logger },
): ResumePoint {
  const { log } = o;
  const known = new Map<string, CheckpointRef>();
  for (const c of [...readManifest(workDir), ...(o.heartbeat?.checkpoints ?? []), ...(o.resumeFrom ? [o.resumeFrom] : [])]) known.set(c.path, c);
  const candidates = [...known.values()].sort((a, b) => b.step - a.step);
  const swept = sweepUnannounced(checkpointDir(workDir), candidates, o.isPinned);
  if (swept.length) log.warn({ removed: swept }, 'removed checkpoints an earlier attempt wrote but never announced');
  let resumedFrom: CheckpointRef | null = null;
  for (const c of candidates) {
    if (!insideDir(workDir, c.path)) {
      log.warn({ path: c.path }, 'ignoring a resume checkpoint outside the job dir');
      continue;
    }
    if (fs.existsSync(c.path)) {
      resumedFrom = c;
      break;
    }
    log.warn({ path: c.path, step: c.step }, 'checkpoint to resume from is missing; trying the previous one');
  }
  const checkpoints = candidates.filter((c) => fs.existsSync(c.path) && insideDir(workDir, c.path)).sort((a, b) => a.step - b.step);
  return { resumedFrom, checkpoints };
}
