/**
 * What a job reports about itself: the train activity's result, the job summary, and the `progress`
 * query reply (which carries the summary once the job ended). Workflow-safe.
 */
import { readableNumber, type CheckpointRef, type GpuTelemetry, type Phase, type ProgressReport } from './progress';
import type { RetryRecord } from './retry';

/** A file or folder of the job's artifacts folder in object storage: its URI and each file's size and sha256. */
export interface StoredArtifact {
  /** Its path under the artifacts folder: `model.json`, `plots`. */
  name: string;
  uri: string;
  bytes: number;
  files: Array<{ path: string; size: number; sha256: string }>;
}

export interface TrainResult {
  attempt: number;
  workerId: string;
  steps: number;
  epochs: number | null;
  finalLoss: number | null;
  metrics: Record<string, number>;
  validation: Record<string, number>;
  modelPath: string | null;
  /** Where the model artifact is stored (`storage.kind: s3`): `s3://bucket/prefix/jobs/<id>/artifacts/<name>`. Absent otherwise and in older histories. */
  modelUri?: string | null;
  /** Every entry of the job's artifacts folder uploaded with the model (`storage.kind: s3`), the model first. */
  artifacts?: StoredArtifact[];
  lastCheckpoint: CheckpointRef | null;
  checkpoints: CheckpointRef[];
  gpuIds: string[];
  gpu: GpuTelemetry[] | null;
  firstStep: number | null;
  resumedFrom: CheckpointRef | null;
  durationMs: number;
}

export interface JobSummary {
  jobId: string;
  model: string;
  outcome: 'completed' | 'failed' | 'cancelled';
  training_metrics: { final_loss: number | null; epochs: number | null; steps: number; duration_ms: number };
  validation_metrics: Record<string, number>;
  resource_usage: { gpu_ids: string[]; gpu: GpuTelemetry[] | null };
  /**
   * What the job left. Every `path` in the summary is relative to `root`, the job's folder
   * (`<artifacts.root>/jobs/<job id>`) on the hosts that ran it; a path outside it stays absolute.
   * Summaries written before `root` existed carry absolute paths and no `root`: read paths with
   * summaryPath(), which handles both.
   */
  artifacts: {
    root?: string | null;
    model_path: string | null;
    /** Where the model is stored with `storage.kind: s3` (what the registry records): `s3://…`. Absent otherwise. */
    model_uri?: string | null;
    checkpoints: CheckpointRef[];
    last_checkpoint: CheckpointRef | null;
  };
  registry: {
    version: number | null;
    stage: string | null;
    complete: boolean | null;
    missing_metrics: string[];
    decision: string | null;
  };
  session_info: {
    /** Train attempts run (one activity each; pauses and interruptions included). */
    attempts: number;
    /** Attempts ended by an interruption (worker lost or drained, attempt superseded). */
    interruptions?: number;
    /** Every attempt: worker, how it ended, resume step and steps lost (the newest 100 in full once a job continued as new). */
    attempt_log?: AttemptRecord[];
    /** Attempts older than those in attempt_log, as counts: attempts + attempt_log.length = attempts of the job. */
    older_attempts?: OlderAttempts;
    /** Each `kiln retry` of the job: by whom, why, after which run, from which step. */
    retries?: RetryRecord[];
    workers: string[];
    started_at: string;
    ended_at: string;
    cancellation_reason: string | null;
    failure: string | null;
    /** Why the job ended, one line in words: `cancelled: wrong lr (by kiln cancel, ann@host)`, `failed: … (5 attempts)`. */
    end_reason?: string;
    resumed_from_steps: number[];
    /** The final attempt's resume: the checkpoint step it started from and the first step it reported. */
    resume: { from_step: number; first_step: number | null } | null;
    /** Set when an attempt found every recorded checkpoint unreachable and trained from step 0 (onLostCheckpoints: restart). */
    restarted_from_scratch?: { attempt: number; steps_lost: number; reason: string };
    /** Checkpoints an attempt did not resume from: changed on disk since they were verified. */
    skipped_checkpoints?: { attempt: number; step: number; path: string; problem: string }[];
    /** Checkpoints attempts failed on right after resuming from them: suspect once, quarantined (never resumed from) twice. */
    suspect_checkpoints?: { step: number; path: string; failed_attempts: number[]; quarantined: boolean; cause: string }[];
  };
}

/** Attempts folded out of the attempt log a run carries (workflows/continueAsNew.ts), counted. */
export interface OlderAttempts {
  attempts: number;
  /** Their attempt numbers, first and last. */
  first: number;
  last: number;
  by_outcome: Record<string, number>;
  steps_lost: number;
}

/** One train attempt of a job, as the workflow saw it. */
export interface AttemptRecord {
  n: number;
  worker: string | null;
  started_at: string;
  ended_at: string | null;
  outcome: 'running' | 'completed' | 'paused' | 'continued' | 'interrupted' | 'failed' | 'cancelled';
  cause: string | null;
  /** The checkpoint step it resumed from (0: from scratch). */
  resume_step: number;
  /** The last step it reported. */
  last_step: number | null;
  /** Steps it trained that the next attempt has to redo (last step − the checkpoint resumed from). */
  steps_lost: number | null;
}

export interface JobProgress {
  jobId: string;
  model: string;
  phase: Phase;
  attempt: number;
  workerId: string | null;
  step: number;
  totalSteps: number | null;
  epoch: number | null;
  totalEpochs: number | null;
  metrics: Record<string, number>;
  validation: Record<string, number>;
  etaMs: number | null;
  stepsPerSec: number | null;
  lastCheckpoint: ProgressReport['lastCheckpoint'];
  checkpoints: number;
  checkpointBytes: number;
  gpuIds: string[];
  gpu: ProgressReport['gpu'];
  malformedEvents: number;
  lastProgressAt: string | null;
  pausedAt: string | null;
  cancelReason: string | null;
  /** Messages the job received and dropped (malformed, refused, unknown), and the last one's reason. */
  ignoredMessages: number;
  /** The attempts so far (the last may be running); older ones as counts once the job continued as new. */
  attemptLog?: AttemptRecord[];
  olderAttempts?: OlderAttempts | null;
  /** Each `kiln retry` of the job. */
  retries?: RetryRecord[];
  lastIgnored: string | null;
  /** An attempt found every checkpoint unreachable and started over from step 0. */
  restartedFromScratch?: { attempt: number; stepsLost: number; reason: string } | null;
  /** Checkpoints an attempt stepped over: changed on disk since they were verified. */
  skippedCheckpoints?: { attempt: number; step: number; path: string; problem: string }[];
  /** Checkpoints attempts failed on right after resuming from them. */
  suspectCheckpoints?: { step: number; path: string; failedAttempts: number[]; quarantined: boolean; cause: string }[];
  line: string;
  summary: JobSummary | null;
}

/** A summary path as an absolute path: relative ones resolve against `artifacts.root`; absolute ones (older summaries) are returned as they are. */
export function summaryPath(s: Pick<JobSummary, 'artifacts'>, p: string): string {
  const root = s.artifacts.root;
  return p.startsWith('/') || !root ? p : `${root.replace(/\/+$/, '')}/${p}`;
}

/** `p` relative to `root` when it lies inside it (`checkpoints/step-30`); otherwise `p` unchanged. Workflow-safe (no node:path). */
function relativeTo(root: string | null, p: string): string {
  if (!root) return p;
  const r = root.replace(/\/+$/, '');
  return p.startsWith(`${r}/`) ? p.slice(r.length + 1) : p;
}

/** Every non-integer number, deep, to 4 significant digits (readableNumber). */
function roundDeep<T>(v: T): T {
  if (typeof v === 'number') return readableNumber(v) as T;
  if (Array.isArray(v)) return v.map(roundDeep) as T;
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, roundDeep(x)])) as T;
  return v;
}

/**
 * The summary as the memo and the workflow result carry it: numbers to 4 significant digits, paths
 * relative to the job's folder `root` (recorded in `artifacts.root`). The registry keeps the absolute
 * path or storage URI of the model (`kiln models show`); `artifacts.model_uri` repeats a storage URI.
 */
export function readableSummary(s: JobSummary, root: string | null): JobSummary {
  const rel = <C extends { path: string }>(c: C): C => ({ ...c, path: relativeTo(root, c.path) });
  const r = roundDeep(s);
  const si = r.session_info;
  return {
    ...r,
    artifacts: {
      ...r.artifacts,
      root,
      model_path: r.artifacts.model_path === null ? null : relativeTo(root, r.artifacts.model_path),
      checkpoints: r.artifacts.checkpoints.map(rel),
      last_checkpoint: r.artifacts.last_checkpoint && rel(r.artifacts.last_checkpoint),
    },
    session_info: {
      ...si,
      ...(si.skipped_checkpoints ? { skipped_checkpoints: si.skipped_checkpoints.map(rel) } : {}),
      ...(si.suspect_checkpoints ? { suspect_checkpoints: si.suspect_checkpoints.map(rel) } : {}),
    },
  };
}

/** The first line of a message, without the trailing colon that introduces a log tail. */
export function firstLine(message: string, max = 400): string {
  const line = (message.split('\n').find((l) => l.trim() !== '') ?? '').trim().replace(/:$/, '');
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** `cancelled: wrong lr (by kiln cancel, ann@host)`, `failed: trainer exited with code 1 at step 200 (5 attempts)`, `completed · v3 production`. */
export function endReason(s: Pick<JobSummary, 'outcome' | 'session_info'>, cancelledBy: string | null = null): string {
  const si = s.session_info;
  const attempts = `${si.attempts} attempt${si.attempts === 1 ? '' : 's'}`;
  if (s.outcome === 'cancelled') {
    const reason = si.cancellation_reason ?? 'no reason given';
    // The defaults the workflow fills in when no reason came: `cancelled by signal`, `cancelled (temporal workflow cancel)`.
    if (/^cancelled (by |\()/.test(reason)) return `cancelled: no reason given (by ${cancelledBy ?? reason.replace(/^cancelled (by )?\(?|\)$/g, '')})`;
    return `cancelled: ${reason}${cancelledBy ? ` (by ${cancelledBy})` : ''}`;
  }
  if (s.outcome === 'failed') return `failed: ${firstLine(si.failure ?? 'unknown cause')} (${attempts})`;
  return `completed (${attempts})`;
}
