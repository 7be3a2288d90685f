/**
 * `kiln status`: what Temporal knows about a job. Truth comes from describe and the workflow's
 * `progress` query, never from a table of Kiln's own; without a worker to answer the query, from the
 * pending train activity's last heartbeat.
 */
import type { Client, WorkflowExecutionDescription } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import { queryProgress } from '../client/jobs';
import { formatDuration } from '../shared/duration';
import type { GpuTelemetry, TrainHeartbeat } from '../shared/progress';
import { retryLine } from '../shared/retry';
import type { AttemptRecord, JobProgress, OlderAttempts } from '../shared/summary';
import { readKilnSearchAttributes } from '../shared/searchAttributes';
import { endReason, type JobSummary } from '../shared/summary';
import { isRetrainId, retrainStatus } from './retrainStatus';
import { bool, int, jobIdArg, parseArgs } from './args';
import { withClient, type CliContext, type Verb } from './verb';

/** How long `status` waits for a worker to answer the progress query before using describe alone. */
const QUERY_TIMEOUT_MS = 3000;

type KilnAttributes = ReturnType<typeof readKilnSearchAttributes>;
type Nullable<T> = { [K in keyof T]: T[K] | null };

/** A train heartbeat as describe shows it: any field may be missing from the payload; `checkpoints` is a count. */
export type HeartbeatView = Nullable<Omit<TrainHeartbeat, 'metrics' | 'checkpoints'>> & Pick<TrainHeartbeat, 'metrics'> & { checkpoints: number };

export interface PendingActivityView {
  type: string;
  attempt: number;
  lastHeartbeatAgeSec: number | null;
  worker: string | null;
  heartbeat: HeartbeatView | null;
  /** The decoded heartbeat details as the activity sent them (null when they could not be decoded). */
  details: unknown;
}

/** describe + the progress query. `phase` is the query's, else the KilnPhase search attribute (which may lag). */
export interface StatusView extends KilnAttributes {
  jobId: JobProgress['jobId'];
  runId: string;
  workflowStatus: string;
  /** Where progress came from: the workflow's `progress` query, or describe alone (no worker answered). */
  source: 'query' | 'describe';
  /** Why the query was not used, when source is describe. */
  queryError: string | null;
  progress: JobProgress | null;
  pendingActivity: PendingActivityView | null;
  summary: JobSummary | null;
  startTime: string;
  closeTime: string | null;
}

type RawPendingActivity = NonNullable<WorkflowExecutionDescription['raw']['pendingActivities']>[number];

function heartbeatView(details: unknown): HeartbeatView | null {
  if (!details || typeof details !== 'object') return null;
  const d = details as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === 'number' ? v : null);
  return {
    step: num(d.step),
    epoch: num(d.epoch),
    metrics: d.metrics && typeof d.metrics === 'object' ? (d.metrics as Record<string, number>) : {},
    lastCheckpoint: (d.lastCheckpoint as HeartbeatView['lastCheckpoint']) ?? null,
    checkpoints: Array.isArray(d.checkpoints) ? d.checkpoints.length : 0,
    gpu: Array.isArray(d.gpu) ? (d.gpu as GpuTelemetry[]) : null,
    workerId: typeof d.workerId === 'string' ? d.workerId : null,
    line: typeof d.line === 'string' ? d.line : null,
    attempt: num(d.attempt),
  };
}

/** The first heartbeat detail, through the client's data converter (codecs, then payload converter); null if unreadable. */
async function decodeHeartbeat(client: Client, payloads: Payload[] | null | undefined): Promise<unknown> {
  if (!payloads?.[0]?.data) return null;
  try {
    return (await decodeFromPayloadsAtIndex<unknown>(client.options.loadedDataConverter, 0, payloads)) ?? null;
  } catch {
    return null;
  }
}

async function pendingActivityView(client: Client, raw: RawPendingActivity | undefined): Promise<PendingActivityView | null> {
  if (!raw) return null;
  const hb = raw.lastHeartbeatTime;
  const hbTime = hb?.seconds ? Number(hb.seconds) * 1000 + Math.floor((hb.nanos ?? 0) / 1e6) : null;
  const details = await decodeHeartbeat(client, raw.heartbeatDetails?.payloads);
  return {
    type: raw.activityType?.name ?? '?',
    attempt: raw.attempt ?? 1,
    lastHeartbeatAgeSec: hbTime ? Math.max(0, (Date.now() - hbTime) / 1000) : null,
    worker: raw.lastWorkerIdentity || null,
    heartbeat: heartbeatView(details),
    details,
  };
}

async function progressOrWhyNot(client: Client, jobId: string, timeoutMs: number): Promise<Pick<StatusView, 'progress' | 'source' | 'queryError'>> {
  try {
    // A gRPC deadline, not a timer race: the call must end before the connection is closed.
    const progress = await client.withDeadline(Date.now() + timeoutMs, () => queryProgress(client, jobId));
    return { progress, source: 'query', queryError: null };
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    const queryError = /DEADLINE_EXCEEDED|deadline/i.test(msg) ? `no answer in ${timeoutMs} ms` : (msg.split('\n')[0] ?? 'query failed');
    return { progress: null, source: 'describe', queryError };
  }
}

/** describe + the progress query; without a worker to answer the query, the heartbeat details. */
export async function jobStatus(client: Client, jobId: string, o: { queryTimeoutMs?: number } = {}): Promise<StatusView> {
  const d = await client.workflow.getHandle(jobId).describe();
  const pendingActivity = await pendingActivityView(client, d.raw.pendingActivities?.[0]);
  const { progress, source, queryError } = await progressOrWhyNot(client, jobId, o.queryTimeoutMs ?? QUERY_TIMEOUT_MS);
  const sa = readKilnSearchAttributes(d.typedSearchAttributes);
  const summary = progress?.summary ?? ((d.memo as { summary?: JobSummary } | undefined)?.summary ?? null);
  return {
    jobId,
    runId: d.runId,
    workflowStatus: d.status.name,
    phase: progress?.phase ?? sa.phase,
    source,
    queryError,
    progress,
    pendingActivity,
    summary,
    model: sa.model,
    trigger: sa.trigger,
    startTime: d.startTime.toISOString(),
    closeTime: d.closeTime?.toISOString() ?? null,
  };
}

const fmtMetrics = (m: Record<string, number>) =>
  Object.entries(m)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? v.toPrecision(4) : String(v)}`)
    .join(' ');
const fmtGpu = (g: GpuTelemetry[]) => g.map((x) => `#${x.index} ${x.utilizationPct ?? '?'}% ${x.memoryUsedMiB ?? '?'}/${x.memoryTotalMiB ?? '?'} MiB`).join('  ');

/** `on host:123:gpu-gpu, interrupted: worker lost (…); from step 50, reached 92, 42 steps lost` */
export function attemptLine(a: AttemptRecord): string {
  const end = a.outcome === 'running' ? 'running' : `${a.outcome}${a.cause && a.cause !== a.outcome ? `: ${a.cause}` : ''}`;
  const steps = `from step ${a.resume_step}${a.last_step !== null ? `, reached ${a.last_step}` : ''}${a.steps_lost ? `, ${a.steps_lost} steps lost` : ''}`;
  return `${a.worker ? `on ${a.worker}, ` : ''}${end}; ${steps}`;
}

/** `1–400: 380 interrupted, 20 failed, 112 steps lost (folded when the job continued as new)` */
export function olderLine(o: OlderAttempts): string {
  const by = Object.entries(o.by_outcome).map(([k, n]) => `${n} ${k}`).join(', ');
  return `${o.first}–${o.last}: ${by}, ${o.steps_lost} steps lost (counted, not listed: folded when the job continued as new)`;
}

function progressLines(p: JobProgress): string[] {
  const lines = [`  progress:   ${p.line}`, `  attempt:    ${p.attempt}   worker: ${p.workerId ?? '-'}   GPUs: ${p.gpuIds.join(',') || '-'}`];
  if (p.gpu?.length) lines.push(`  GPU:        ${fmtGpu(p.gpu)}`);
  if (p.lastProgressAt) lines.push(`  last step:  ${((Date.now() - Date.parse(p.lastProgressAt)) / 1000).toFixed(1)} s ago${p.stepsPerSec ? ` (${p.stepsPerSec.toFixed(1)} steps/s)` : ''}`);
  lines.push(`  checkpoint: ${p.lastCheckpoint ? `step ${p.lastCheckpoint.step} ${p.lastCheckpoint.path}` : '-'}  (${p.checkpoints} kept, ${(p.checkpointBytes / 1024).toFixed(1)} KiB)`);
  if (Object.keys(p.metrics).length) lines.push(`  metrics:    ${fmtMetrics(p.metrics)}`);
  if (Object.keys(p.validation).length) lines.push(`  validation: ${fmtMetrics(p.validation)}`);
  if (p.cancelReason) lines.push(`  cancelled:  ${p.cancelReason}`);
  if (p.restartedFromScratch) lines.push(`  lost work:  attempt ${p.restartedFromScratch.attempt} restarted from step 0, ${p.restartedFromScratch.stepsLost} steps lost: ${p.restartedFromScratch.reason.split('\n')[0]}`);
  for (const s of p.suspectCheckpoints ?? []) lines.push(`  ${s.quarantined ? 'quarantine' : 'suspect'}: step ${s.step} ${s.path}: attempt(s) ${s.failedAttempts.join(', ')} failed right after resuming from it${s.quarantined ? '; never resumed from again' : ''} (${s.cause})`);
  for (const k of p.skippedCheckpoints ?? []) lines.push(`  bad ckpt:   step ${k.step} ${k.path}: ${k.problem}; attempt ${k.attempt} resumed from an earlier one`);
  for (const r of p.retries ?? []) lines.push(`  retried:    ${retryLine(r)}`);
  // Older runs answer without these fields.
  if (p.olderAttempts) lines.push(`  attempts ${olderLine(p.olderAttempts)}`);
  for (const a of p.attemptLog ?? []) lines.push(`  attempt ${a.n}:  ${attemptLine(a)}`);
  if (p.ignoredMessages) lines.push(`  ignored:    ${p.ignoredMessages} message(s) the job dropped; last: ${p.lastIgnored}`);
  return lines;
}

/** The pending activity, and its heartbeat when there is no query reply to show instead. */
function activityLines(a: PendingActivityView, withHeartbeat: boolean): string[] {
  const lines = [`  activity:   ${a.type} attempt ${a.attempt} on ${a.worker ?? '-'}, last heartbeat ${a.lastHeartbeatAgeSec === null ? 'never' : `${a.lastHeartbeatAgeSec.toFixed(1)} s ago`}`];
  const hb = a.heartbeat;
  if (withHeartbeat && hb) {
    lines.push(`  heartbeat:  step ${hb.step ?? '?'}${hb.epoch !== null ? `, epoch ${hb.epoch}` : ''}${Object.keys(hb.metrics).length ? `, ${fmtMetrics(hb.metrics)}` : ''}`);
    lines.push(`  checkpoint: ${hb.lastCheckpoint ? `step ${hb.lastCheckpoint.step} ${hb.lastCheckpoint.path}` : '-'}  (${hb.checkpoints} kept)`);
    if (hb.gpu?.length) lines.push(`  GPU:        ${fmtGpu(hb.gpu)}`);
  }
  return lines;
}

function summaryLines(r: JobSummary): string[] {
  const lines = [`  outcome:    ${r.outcome}; steps ${r.training_metrics.steps}, final loss ${r.training_metrics.final_loss?.toPrecision(4) ?? '-'}, ${formatDuration(r.training_metrics.duration_ms)}`];
  if (r.registry.version) lines.push(`  registry:   v${r.registry.version} ${r.registry.stage}${r.registry.complete === false ? ' (INCOMPLETE: missing ' + r.registry.missing_metrics.join(', ') + ')' : ''} — ${r.registry.decision}`);
  const a = r.artifacts;
  // Paths relative to the job's folder `root`; summaries from before it existed have absolute paths and no root.
  if (a.model_path || a.last_checkpoint) lines.push(`  files:      ${a.root ? `in ${a.root}: ` : ''}model ${a.model_uri ?? a.model_path ?? '-'}, last checkpoint ${a.last_checkpoint ? `step ${a.last_checkpoint.step} ${a.last_checkpoint.path}` : '-'}`);
  if (r.outcome !== 'completed') lines.push(`  ended:      ${r.session_info.end_reason ?? endReason(r)}`);
  if (r.session_info.cancellation_reason && r.outcome === 'cancelled') lines.push(`  reason:     ${r.session_info.cancellation_reason}`);
  const lost = r.session_info.restarted_from_scratch;
  if (lost) lines.push(`  lost work:  attempt ${lost.attempt} restarted from step 0, ${lost.steps_lost} steps lost: ${lost.reason.split('\n')[0]}`);
  for (const s of r.session_info.suspect_checkpoints ?? []) lines.push(`  ${s.quarantined ? 'quarantine' : 'suspect'}: step ${s.step} ${s.path}: attempt(s) ${s.failed_attempts.join(', ')} failed right after resuming from it${s.quarantined ? '; never resumed from again' : ''} (${s.cause})`);
  for (const k of r.session_info.skipped_checkpoints ?? []) lines.push(`  bad ckpt:   step ${k.step} ${k.path}: ${k.problem}; attempt ${k.attempt} resumed from an earlier one`);
  for (const x of r.session_info.retries ?? []) lines.push(`  retried:    ${retryLine(x)}`);
  // The whole message: the cause, then the trainer's log tail it quotes.
  if (r.session_info.failure) lines.push(`  failure:    ${r.session_info.failure.trimEnd().split('\n').join('\n              ')}`);
  return lines;
}

export function renderStatus(s: StatusView): string {
  const from = s.source === 'query' ? 'from the progress query' : `from describe + the last heartbeat: no worker answered the progress query (${s.queryError})`;
  const lines = [`${s.jobId}  ${s.phase ?? '?'}  (model ${s.model ?? '?'}, workflow ${s.workflowStatus}, ${from})`];
  if (s.progress) lines.push(...progressLines(s.progress));
  if (s.pendingActivity) lines.push(...activityLines(s.pendingActivity, !s.progress));
  if (s.summary) lines.push(...summaryLines(s.summary));
  return lines.join('\n');
}

/** Exit code for a finished job: 0 completed, 1 failed (or terminated, timed out), 3 cancelled. */
export function outcomeOf(s: StatusView): { outcome: JobSummary['outcome']; code: number } {
  const outcome = s.summary?.outcome ?? (s.workflowStatus === 'COMPLETED' ? 'completed' : s.workflowStatus === 'CANCELLED' ? 'cancelled' : 'failed');
  return { outcome, code: outcome === 'completed' ? 0 : outcome === 'cancelled' ? 3 : 1 };
}

async function status(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' }, 'query-timeout': { type: 'string' } }, 'status');
  const id = isRetrainId(p.positional[0]) ? p.positional[0]! : jobIdArg(p, 'status');
  return withClient(ctx.config(), async (client) => {
    const retrain = await retrainStatus(client, id, { queryTimeoutMs: int(p, 'query-timeout', 'status') ?? QUERY_TIMEOUT_MS });
    if (retrain) {
      ctx.out(bool(p, 'json') ? JSON.stringify(retrain.view) : retrain.text);
      return 0;
    }
    const s = await jobStatus(client, id, { queryTimeoutMs: int(p, 'query-timeout', 'status') });
    ctx.out(bool(p, 'json') ? JSON.stringify(s) : renderStatus(s));
    return 0;
  });
}

export const statusVerb: Verb = {
  summary: 'phase, progress, worker, GPU, checkpoint and metrics of a job',
  usage: `kiln status <job | retrain run> [--json] [--query-timeout MS]

Reads describe and the workflow's progress query. When no worker answers the query (control worker
down), it shows describe's pending activity and its last heartbeat instead, and says so
("source": "describe" in --json). A RetrainModel run id (kiln list --retrains) shows its phase,
decision and training job.

Examples:
  kiln status train-spirals-3k9x2a
  kiln status train-spirals-3k9x2a --json | jq .progress.line`,
  run: status,
};
