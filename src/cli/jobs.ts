/**
 * Job verbs: submit, status, watch, list, cancel, pause, resume, logs. Truth comes from Temporal
 * (describe, the `progress` query, visibility), never from a table of Kiln's own.
 *
 * Exit codes: 0 success, 1 failure (bad spec, unknown job, server unreachable, refused action),
 * 2 usage error; `watch` (and `submit --watch`) exit 0 completed, 1 failed, 3 cancelled.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WorkflowNotFoundError, type Client, type WorkflowExecutionDescription } from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import type { JobProgress } from '../shared/progress';
import { formatDuration } from '../shared/duration';
import { ConfigError, UsageError } from '../shared/errors';
import { JobIdSchema } from '../shared/spec';
import { PHASES, progressLine, type CheckpointRef, type GpuTelemetry } from '../shared/progress';
import { type JobSummary } from '../shared/summary';
import { jobSummary, queryProgress, signalJob, submitJob } from '../client/jobs';
import { buildSpec } from '../config/spec';
import { coerceParam } from '../shared/params';
import { bool, int, list, parseArgs, str } from './args';
import { withClient, type CliContext, type Verb } from './verb';

/** How long `status` waits for a worker to answer the progress query before using describe alone. */
const QUERY_TIMEOUT_MS = 3000;


function jobIdArg(p: { positional: string[] }, verb: string): string {
  const id = p.positional[0];
  if (!id) throw new UsageError(`kiln ${verb}: which job? e.g. kiln ${verb} train-spirals-3k9x2a (see kiln list)`);
  const r = JobIdSchema.safeParse(id);
  if (!r.success) throw new UsageError(`kiln ${verb}: ${r.error.issues[0]!.message} (got ${JSON.stringify(id)})`);
  if (p.positional.length > 1) throw new UsageError(`kiln ${verb}: one job at a time, got ${p.positional.length} (${p.positional.join(' ')})`);
  return id;
}

/** `--param k=v` flags, typed by the trainer's declared params. Undeclared names are refused here. */
export function parseParamFlags(config: KilnConfig, model: string, raw: string[]): Record<string, unknown> {
  const m = config.models[model];
  const decl = m ? config.trainers[m.trainer]?.params ?? {} : {};
  const out: Record<string, unknown> = {};
  for (const kv of raw) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`kiln submit: --param takes key=value, got "${kv}" (e.g. --param lr=0.01)`);
    const k = kv.slice(0, eq);
    if (m && !decl[k]) {
      const known = Object.keys(decl);
      throw new ConfigError(`kiln submit: --param ${k}`, [
        `trainer "${m.trainer}" of model ${model} declares no param "${k}" (declared: ${known.join(', ') || 'none'}; declare it under trainers.${m.trainer}.params in ${path.basename(config.file)})`,
      ]);
    }
    out[k] = coerceParam(decl[k], kv.slice(eq + 1));
  }
  return out;
}

interface HeartbeatView {
  step: number | null;
  epoch: number | null;
  metrics: Record<string, number>;
  lastCheckpoint: CheckpointRef | null;
  checkpoints: number;
  gpu: GpuTelemetry[] | null;
  workerId: string | null;
  attempt: number | null;
}

export interface StatusView {
  jobId: string;
  runId: string;
  workflowStatus: string;
  phase: string | null;
  /** Where progress came from: the workflow's `progress` query, or describe alone (no worker answered). */
  source: 'query' | 'describe';
  /** Why the query was not used, when source is describe. */
  queryError: string | null;
  progress: JobProgress | null;
  pendingActivity: { type: string; attempt: number; lastHeartbeatAgeSec: number | null; worker: string | null; heartbeat: HeartbeatView | null; details: unknown } | null;
  summary: JobSummary | null;
  model: string | null;
  trigger: string | null;
  startTime: string;
  closeTime: string | null;
}

function searchAttr(d: Pick<WorkflowExecutionDescription, 'typedSearchAttributes'>, name: string): string | null {
  return (d.typedSearchAttributes.getAll().find((p) => p.key.name === name)?.value as string | undefined) ?? null;
}

function heartbeatView(details: unknown): HeartbeatView | null {
  if (!details || typeof details !== 'object') return null;
  const d = details as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === 'number' ? v : null);
  return {
    step: num(d.step),
    epoch: num(d.epoch),
    metrics: d.metrics && typeof d.metrics === 'object' ? (d.metrics as Record<string, number>) : {},
    lastCheckpoint: (d.lastCheckpoint as CheckpointRef | null) ?? null,
    checkpoints: Array.isArray(d.checkpoints) ? d.checkpoints.length : 0,
    gpu: Array.isArray(d.gpu) ? (d.gpu as GpuTelemetry[]) : null,
    workerId: typeof d.workerId === 'string' ? d.workerId : null,
    attempt: num(d.attempt),
  };
}

/** describe + the progress query; without a worker to answer the query, the heartbeat details. */
export async function jobStatus(client: Client, jobId: string, o: { queryTimeoutMs?: number } = {}): Promise<StatusView> {
  const h = client.workflow.getHandle(jobId);
  const d = await h.describe();
  const raw = d.raw.pendingActivities?.[0];
  let pendingActivity: StatusView['pendingActivity'] = null;
  if (raw) {
    const hbTime = raw.lastHeartbeatTime?.seconds ? Number(raw.lastHeartbeatTime.seconds) * 1000 + Math.floor((raw.lastHeartbeatTime.nanos ?? 0) / 1e6) : null;
    let details: unknown = null;
    const payload = raw.heartbeatDetails?.payloads?.[0];
    if (payload?.data) {
      try {
        details = JSON.parse(Buffer.from(payload.data).toString('utf8'));
      } catch {
        details = null;
      }
    }
    pendingActivity = {
      type: raw.activityType?.name ?? '?',
      attempt: raw.attempt ?? 1,
      lastHeartbeatAgeSec: hbTime ? Math.max(0, (Date.now() - hbTime) / 1000) : null,
      worker: raw.lastWorkerIdentity || null,
      heartbeat: heartbeatView(details),
      details,
    };
  }
  let progress: JobProgress | null = null;
  let source: StatusView['source'] = 'describe';
  let queryError: string | null = null;
  const timeoutMs = o.queryTimeoutMs ?? QUERY_TIMEOUT_MS;
  try {
    // A gRPC deadline, not a timer race: the call must end before the connection is closed.
    progress = await client.withDeadline(Date.now() + timeoutMs, () => queryProgress(client, jobId));
    source = 'query';
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    queryError = /DEADLINE_EXCEEDED|deadline/i.test(msg) ? `no answer in ${timeoutMs} ms` : (msg.split('\n')[0] ?? 'query failed');
  }
  const summary = progress?.summary ?? ((d.memo as { summary?: JobSummary } | undefined)?.summary ?? null);
  return {
    jobId,
    runId: d.runId,
    workflowStatus: d.status.name,
    phase: progress?.phase ?? searchAttr(d, 'KilnPhase'),
    source,
    queryError,
    progress,
    pendingActivity,
    summary,
    model: searchAttr(d, 'KilnModel'),
    trigger: searchAttr(d, 'KilnTrigger'),
    startTime: d.startTime.toISOString(),
    closeTime: d.closeTime?.toISOString() ?? null,
  };
}

const fmtMetrics = (m: Record<string, number>) =>
  Object.entries(m)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? v.toPrecision(4) : String(v)}`)
    .join(' ');
const fmtGpu = (g: GpuTelemetry[]) => g.map((x) => `#${x.index} ${x.utilizationPct ?? '?'}% ${x.memoryUsedMiB ?? '?'}/${x.memoryTotalMiB ?? '?'} MiB`).join('  ');

export function renderStatus(s: StatusView): string {
  const from = s.source === 'query' ? 'from the progress query' : `from describe + the last heartbeat: no worker answered the progress query (${s.queryError})`;
  const lines = [`${s.jobId}  ${s.phase ?? '?'}  (model ${s.model ?? '?'}, workflow ${s.workflowStatus}, ${from})`];
  const p = s.progress;
  if (p) {
    lines.push(`  progress:   ${p.line}`);
    lines.push(`  attempt:    ${p.attempt}   worker: ${p.workerId ?? '-'}   GPUs: ${p.gpuIds.join(',') || '-'}`);
    if (p.gpu?.length) lines.push(`  GPU:        ${fmtGpu(p.gpu)}`);
    if (p.lastProgressAt) lines.push(`  last step:  ${((Date.now() - Date.parse(p.lastProgressAt)) / 1000).toFixed(1)} s ago${p.stepsPerSec ? ` (${p.stepsPerSec.toFixed(1)} steps/s)` : ''}`);
    lines.push(`  checkpoint: ${p.lastCheckpoint ? `step ${p.lastCheckpoint.step} ${p.lastCheckpoint.path}` : '-'}  (${p.checkpoints} kept, ${(p.checkpointBytes / 1024).toFixed(1)} KiB)`);
    if (Object.keys(p.metrics).length) lines.push(`  metrics:    ${fmtMetrics(p.metrics)}`);
    if (Object.keys(p.validation).length) lines.push(`  validation: ${fmtMetrics(p.validation)}`);
    if (p.cancelReason) lines.push(`  cancelled:  ${p.cancelReason}`);
  }
  if (s.pendingActivity) {
    const a = s.pendingActivity;
    lines.push(`  activity:   ${a.type} attempt ${a.attempt} on ${a.worker ?? '-'}, last heartbeat ${a.lastHeartbeatAgeSec === null ? 'never' : `${a.lastHeartbeatAgeSec.toFixed(1)} s ago`}`);
    const hb = a.heartbeat;
    if (!p && hb) {
      lines.push(`  heartbeat:  step ${hb.step ?? '?'}${hb.epoch !== null ? `, epoch ${hb.epoch}` : ''}${Object.keys(hb.metrics).length ? `, ${fmtMetrics(hb.metrics)}` : ''}`);
      lines.push(`  checkpoint: ${hb.lastCheckpoint ? `step ${hb.lastCheckpoint.step} ${hb.lastCheckpoint.path}` : '-'}  (${hb.checkpoints} kept)`);
      if (hb.gpu?.length) lines.push(`  GPU:        ${fmtGpu(hb.gpu)}`);
    }
  }
  if (s.summary) {
    const r = s.summary;
    lines.push(`  outcome:    ${r.outcome}; steps ${r.training_metrics.steps}, final loss ${r.training_metrics.final_loss?.toPrecision(4) ?? '-'}, ${formatDuration(r.training_metrics.duration_ms)}`);
    if (r.registry.version) lines.push(`  registry:   v${r.registry.version} ${r.registry.stage}${r.registry.complete === false ? ' (INCOMPLETE: missing ' + r.registry.missing_metrics.join(', ') + ')' : ''} — ${r.registry.decision}`);
    if (r.session_info.cancellation_reason && r.outcome === 'cancelled') lines.push(`  reason:     ${r.session_info.cancellation_reason}`);
    if (r.session_info.failure) lines.push(`  failure:    ${r.session_info.failure.split('\n')[0]}`);
  }
  return lines.join('\n');
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Exit code for a finished job: 0 completed, 1 failed (or terminated, timed out), 3 cancelled. */
export function outcomeOf(s: StatusView): { outcome: 'completed' | 'failed' | 'cancelled'; code: number } {
  const outcome = s.summary?.outcome ?? (s.workflowStatus === 'COMPLETED' ? 'completed' : s.workflowStatus === 'CANCELLED' ? 'cancelled' : 'failed');
  return { outcome, code: outcome === 'completed' ? 0 : outcome === 'cancelled' ? 3 : 1 };
}

function bar(frac: number, width = 24): string {
  return `[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(frac * 100).toFixed(0).padStart(3)}%`;
}

/**
 * The freshest training progress: the query's report (sent every workers.progressInterval), moved
 * forward by the train activity's heartbeat in describe (every ~0.5 s) when that is newer, or the
 * heartbeat alone when no worker answers the query.
 */
export function currentProgress(s: StatusView): { step: number; totalSteps: number | null; epoch: number | null; totalEpochs: number | null; metrics: Record<string, number>; etaMs: number | null; gpu: GpuTelemetry[] | null; from: 'query' | 'heartbeat' } | null {
  const p = s.progress;
  const hb = s.pendingActivity?.type === 'train' ? s.pendingActivity.heartbeat : null;
  if (p && p.phase === 'training') {
    if (hb && hb.attempt === p.attempt && hb.step !== null && hb.step > p.step) {
      const etaMs = p.stepsPerSec && p.totalSteps ? Math.max(0, ((p.totalSteps - hb.step) / p.stepsPerSec) * 1000) : p.etaMs;
      return { step: hb.step, totalSteps: p.totalSteps, epoch: hb.epoch ?? p.epoch, totalEpochs: p.totalEpochs, metrics: { ...p.metrics, ...hb.metrics }, etaMs, gpu: hb.gpu ?? p.gpu, from: 'heartbeat' };
    }
    return { step: p.step, totalSteps: p.totalSteps, epoch: p.epoch, totalEpochs: p.totalEpochs, metrics: p.metrics, etaMs: p.etaMs, gpu: p.gpu, from: 'query' };
  }
  if (!p && hb && hb.step !== null) return { step: hb.step, totalSteps: null, epoch: hb.epoch, totalEpochs: null, metrics: hb.metrics, etaMs: null, gpu: hb.gpu, from: 'heartbeat' };
  return null;
}

/** One progress line: `<job> training [####....] 40% epoch 2/5 · step 40/100 · loss 0.31 · ETA 12s · GPU 97%`. */
export function watchLine(s: StatusView, withBar: boolean): string {
  const phase = s.summary?.outcome ?? s.phase ?? '?';
  const c = currentProgress(s);
  if (c && c.step > 0 && (s.progress || s.workflowStatus === 'RUNNING')) {
    const frac = c.totalSteps ? Math.min(1, c.step / c.totalSteps) : 0;
    const gpu = c.gpu?.length ? ` · GPU ${c.gpu.map((g) => `${g.utilizationPct ?? '?'}%`).join('/')}` : '';
    const note = s.progress ? '' : ' (from the heartbeat: no worker answers the progress query)';
    return `${s.jobId} ${phase} ${withBar && c.totalSteps ? `${bar(frac)} ` : ''}${progressLine(c, formatDuration)}${gpu}${note}`;
  }
  const p = s.progress;
  return `${s.jobId} ${phase}${p?.line && !p.line.startsWith(phase) ? ` · ${p.line}` : ''}`;
}

/**
 * Polls status until the job ends; returns the exit code for its outcome (0 completed, 1 failed,
 * 3 cancelled). On a TTY the line is redrawn in place; otherwise each change is a new line, so logs
 * and pipes get plain text. With json, one JSON object per change and a final one with the outcome.
 */
export async function watchJob(
  client: Client,
  jobId: string,
  out: (t: string) => void,
  opts: { tty?: boolean; intervalMs?: number; json?: boolean; err?: (t: string) => void } = {},
): Promise<number> {
  const tty = !opts.json && (opts.tty ?? Boolean(process.stdout.isTTY));
  const err = opts.err ?? ((t: string) => process.stderr.write(`${t}\n`));
  let last = '';
  for (;;) {
    let s: StatusView;
    try {
      s = await jobStatus(client, jobId);
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) err(`kiln watch: no job ${jobId} (\`kiln list\` shows the jobs)`);
      else err(`kiln watch: ${(e as Error).message}`);
      return 1;
    }
    const closed = s.workflowStatus !== 'RUNNING';
    const phase = s.summary?.outcome ?? s.phase ?? '?';
    const line = watchLine(s, tty);
    if (opts.json) {
      const c = currentProgress(s);
      const o = { jobId, phase, step: c?.step ?? null, totalSteps: c?.totalSteps ?? null, epoch: c?.epoch ?? null, totalEpochs: c?.totalEpochs ?? null, loss: c?.metrics.loss ?? null, etaMs: c?.etaMs ?? null, gpu: c?.gpu ?? null, source: s.source };
      const text = JSON.stringify(o);
      if (text !== last) out(text);
      last = text;
    } else if (tty) {
      const cols = process.stdout.columns || 120;
      process.stdout.write(`\r\x1b[2K${line.slice(0, cols - 1)}`);
    } else if (line !== last) {
      out(line);
    }
    if (!opts.json) last = line;
    if (closed || TERMINAL.has(phase)) {
      if (tty) process.stdout.write('\n');
      const o = outcomeOf(s);
      if (opts.json) out(JSON.stringify({ jobId, outcome: o.outcome, exitCode: o.code, workflowStatus: s.workflowStatus, summary: s.summary }));
      else out(renderStatus(s));
      return o.code;
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000));
  }
}

async function submit(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { param: { type: 'list', alias: 'p' }, pool: { type: 'string' }, gpus: { type: 'string' }, watch: { type: 'bool' }, json: { type: 'bool' }, id: { type: 'string' } }, 'submit');
  const model = p.positional[0];
  if (!model) throw new UsageError('kiln submit: which model? e.g. kiln submit spirals --param lr=0.05 (models are listed in temporal.yaml; kiln config check)');
  if (p.positional.length > 1) throw new UsageError(`kiln submit: one model at a time; params go in --param k=v (got ${p.positional.slice(1).join(' ')})`);
  const config = ctx.config();
  const jobId = str(p, 'id');
  let spec;
  try {
    spec = buildSpec(config, model, { params: parseParamFlags(config, model, list(p, 'param')), pool: str(p, 'pool'), gpus: int(p, 'gpus', 'submit') });
  } catch (err) {
    if (err instanceof ConfigError && !err.source.startsWith('kiln submit')) throw new ConfigError(`kiln submit: the spec for model ${model}`, err.problems);
    throw err;
  }
  return withClient(config, async (client) => {
    let h;
    try {
      h = await submitJob(client, config, spec, { jobId });
    } catch (err) {
      if (err instanceof ConfigError) throw new ConfigError(`kiln submit: the spec for model ${model}`, err.problems);
      if ((err as Error).name === 'WorkflowExecutionAlreadyStartedError') throw new Error(`kiln submit: a job with id ${jobId} already exists; pick another --id or leave it out`);
      throw err;
    }
    if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: h.workflowId, runId: h.firstExecutionRunId, model: spec.model, trainer: spec.trainer, pool: spec.pool, gpus: spec.gpus, params: spec.params }));
    else ctx.out(h.workflowId);
    if (bool(p, 'watch')) return watchJob(client, h.workflowId, ctx.out, { json: bool(p, 'json') });
    return 0;
  });
}

async function status(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' }, 'query-timeout': { type: 'string' } }, 'status');
  const id = jobIdArg(p, 'status');
  return withClient(ctx.config(), async (client) => {
    const s = await jobStatus(client, id, { queryTimeoutMs: int(p, 'query-timeout', 'status') });
    ctx.out(bool(p, 'json') ? JSON.stringify(s) : renderStatus(s));
    return 0;
  });
}

async function watch(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' }, interval: { type: 'string' } }, 'watch');
  const id = jobIdArg(p, 'watch');
  return withClient(ctx.config(), (client) => watchJob(client, id, ctx.out, { json: bool(p, 'json'), intervalMs: int(p, 'interval', 'watch') }));
}

function sinceQuery(since: string): string {
  const m = /^(\d+)([mhd])$/.exec(since);
  if (!m) throw new UsageError(`kiln list: --since takes a duration like 30m, 6h or 1d, got "${since}"`);
  const ms = Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'm' | 'h' | 'd'];
  return `StartTime > "${new Date(Date.now() - ms).toISOString()}"`;
}

export interface JobRow {
  jobId: string;
  model: string | null;
  phase: string | null;
  trigger: string | null;
  status: string;
  start: string;
  close: string | null;
}

/** The visibility query `kiln list` runs; also what to paste into the Web UI or `temporal workflow list -q`. */
export function listQuery(f: { model?: string; phase?: string; trigger?: string; since?: string }): string {
  const clauses = [`WorkflowType = "TrainingJob"`];
  const q = (v: string) => JSON.stringify(v);
  if (f.model) clauses.push(`KilnModel = ${q(f.model)}`);
  if (f.phase) {
    if (!(PHASES as readonly string[]).includes(f.phase)) throw new UsageError(`kiln list: unknown phase "${f.phase}" (phases: ${PHASES.join(', ')})`);
    clauses.push(`KilnPhase = ${q(f.phase)}`);
  }
  if (f.trigger) clauses.push(`KilnTrigger = ${q(f.trigger)}`);
  if (f.since) clauses.push(sinceQuery(f.since));
  return clauses.join(' AND ');
}

export async function listJobs(client: Client, f: { model?: string; phase?: string; trigger?: string; since?: string; limit?: number }): Promise<JobRow[]> {
  const rows: JobRow[] = [];
  for await (const w of client.workflow.list({ query: listQuery(f) })) {
    const sa = w.typedSearchAttributes;
    const get = (n: string) => (sa.getAll().find((p) => p.key.name === n)?.value as string | undefined) ?? null;
    rows.push({ jobId: w.workflowId, model: get('KilnModel'), phase: get('KilnPhase'), trigger: get('KilnTrigger'), status: w.status.name, start: w.startTime.toISOString(), close: w.closeTime?.toISOString() ?? null });
    if (rows.length >= (f.limit ?? 100)) break;
  }
  return rows;
}

async function listVerb(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { model: { type: 'string' }, phase: { type: 'string' }, trigger: { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' }, json: { type: 'bool' } }, 'list');
  if (p.positional.length) throw new UsageError(`kiln list: takes no arguments, only filters (got ${p.positional.join(' ')}); e.g. kiln list --model spirals`);
  const f = { model: str(p, 'model'), phase: str(p, 'phase'), trigger: str(p, 'trigger'), since: str(p, 'since'), limit: int(p, 'limit', 'list') };
  listQuery(f);
  return withClient(ctx.config(), async (client) => {
    const rows = await listJobs(client, f);
    if (bool(p, 'json')) ctx.out(JSON.stringify(rows));
    else {
      ctx.out(`${'JOB'.padEnd(34)} ${'MODEL'.padEnd(14)} ${'PHASE'.padEnd(17)} ${'TRIGGER'.padEnd(8)} ${'STATUS'.padEnd(10)} STARTED`);
      for (const r of rows) ctx.out(`${r.jobId.padEnd(34)} ${(r.model ?? '-').padEnd(14)} ${(r.phase ?? '-').padEnd(17)} ${(r.trigger ?? '-').padEnd(8)} ${r.status.padEnd(10)} ${r.start.replace('T', ' ').slice(0, 19)}`);
      ctx.out(rows.length === 0 ? '(no jobs match)' : `${rows.length} job(s)${rows.length === (f.limit ?? 100) ? ' (limit reached; --limit N for more)' : ''}`);
    }
    return 0;
  });
}

type SignalName = 'cancel' | 'pause' | 'resume';

/** What the job must look like for a signal to do anything; otherwise the CLI says why and exits 1. */
function refuseSignal(what: SignalName, status: string, phase: string | null): string | null {
  if (status !== 'RUNNING') return `the job already ended (${status.toLowerCase()}${phase ? `, phase ${phase}` : ''})`;
  if (what === 'pause' && phase !== 'training') return `only a training job can be paused; this one is ${phase ?? 'in an unknown phase'}`;
  if (what === 'resume' && phase !== 'paused') return `the job is not paused (phase ${phase ?? '?'}); a pause takes effect once the trainer has checkpointed (kiln status shows paused)`;
  return null;
}

/** After the signal: the state that shows it took effect. */
async function waitForEffect(client: Client, jobId: string, what: SignalName, timeoutMs: number): Promise<{ status: string; phase: string | null }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await client.workflow.getHandle(jobId).describe();
    const phase = searchAttr(d, 'KilnPhase');
    const st = { status: d.status.name, phase };
    if (what === 'cancel' && st.status !== 'RUNNING') return st;
    if (what === 'pause' && (phase === 'paused' || st.status !== 'RUNNING')) return st;
    if (what === 'resume' && (phase !== 'paused' || st.status !== 'RUNNING')) return st;
    if (Date.now() > deadline) throw new Error(`kiln ${what}: sent, but ${jobId} still shows ${st.status.toLowerCase()} / ${phase} after ${timeoutMs} ms (kiln status ${jobId})`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

function signalVerb(what: SignalName): (ctx: CliContext) => Promise<number> {
  return async (ctx) => {
    const spec = { json: { type: 'bool' as const }, wait: { type: 'bool' as const }, timeout: { type: 'string' as const }, ...(what === 'cancel' ? { reason: { type: 'string' as const } } : {}) };
    const p = parseArgs(ctx.argv, spec, what);
    const id = jobIdArg(p, what);
    return withClient(ctx.config(), async (client) => {
      const d = await client.workflow.getHandle(id).describe();
      const refused = refuseSignal(what, d.status.name, searchAttr(d, 'KilnPhase'));
      if (refused) {
        process.stderr.write(`kiln ${what}: ${id}: ${refused}\n`);
        if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: id, signal: what, sent: false, reason: refused }));
        return 1;
      }
      await signalJob(client, id, what, str(p, 'reason'));
      let after: { status: string; phase: string | null } | null = null;
      if (bool(p, 'wait')) after = await waitForEffect(client, id, what, int(p, 'timeout', what) ?? 120_000);
      if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: id, signal: what, sent: true, ...(after ? { status: after.status, phase: after.phase } : {}) }));
      else if (after) ctx.out(`${what}: ${id} is now ${after.phase ?? after.status.toLowerCase()}`);
      else ctx.out(`${what} sent to ${id}${what === 'cancel' ? ' (the trainer checkpoints and stops; kiln watch shows the end)' : what === 'pause' ? ' (the trainer checkpoints and frees its GPU; kiln status shows paused)' : ''}`);
      return 0;
    });
  };
}

async function logs(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { follow: { type: 'bool', alias: 'f' }, lines: { type: 'string', alias: 'n' }, json: { type: 'bool' } }, 'logs');
  const id = jobIdArg(p, 'logs');
  const config = ctx.config();
  const file = path.join(config.artifactsRoot, 'jobs', id, 'trainer.log');
  const json = bool(p, 'json');
  const emit = (text: string) => {
    if (!text) return;
    if (json) for (const line of text.split('\n').filter((l) => l !== '')) ctx.out(JSON.stringify({ jobId: id, line }));
    else process.stdout.write(text);
  };
  const n = int(p, 'lines', 'logs') ?? 200;
  if (!bool(p, 'follow')) {
    if (!fs.existsSync(file)) throw new Error(`kiln logs: no trainer log for ${id} at ${file} (not started training yet, or it trained on another host without shared artifacts.root)`);
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    emit(lines.slice(-n).join('\n') + '\n');
    return 0;
  }
  return withClient(config, async (client) => {
    const handle = client.workflow.getHandle(id);
    let pos = 0;
    let started = false;
    for (;;) {
      const running = (await handle.describe()).status.name === 'RUNNING';
      if (fs.existsSync(file)) {
        const size = fs.statSync(file).size;
        if (!started) {
          started = true;
          const lines = fs.readFileSync(file, 'utf8').split('\n');
          if (lines[lines.length - 1] === '') lines.pop();
          emit(lines.slice(-n).join('\n') + (lines.length ? '\n' : ''));
          pos = size;
        } else if (size > pos) {
          const fd = fs.openSync(file, 'r');
          const buf = Buffer.alloc(size - pos);
          fs.readSync(fd, buf, 0, buf.length, pos);
          fs.closeSync(fd);
          emit(buf.toString('utf8'));
          pos = size;
        }
      }
      // Read once more after the job closed: its last lines may have landed in between.
      if (!running) {
        if (!started) throw new Error(`kiln logs: ${id} ended without a trainer log at ${file}`);
        return 0;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  });
}

export const jobVerbs: Record<string, Verb> = {
  submit: {
    summary: 'start a training job for a model in temporal.yaml',
    usage: `kiln submit <model> [--param k=v ...] [--pool P] [--gpus N] [--id JOB_ID] [--watch] [--json]

Validates the spec against the trainer's declared params before starting anything (unknown model,
undeclared param or out-of-range value: exit 1, no job started); prints the job id.
With --watch, follows the job and exits like kiln watch (0 completed, 1 failed, 3 cancelled).

Examples:
  kiln submit spirals
  kiln submit spirals --param lr=0.05 --param epochs=20 --watch
  JOB=$(kiln submit spirals --json | jq -r .jobId)`,
    run: submit,
  },
  status: {
    summary: 'phase, progress, worker, GPU, checkpoint and metrics of a job',
    usage: `kiln status <job> [--json] [--query-timeout MS]

Reads describe and the workflow's progress query. When no worker answers the query (control worker
down), it shows describe's pending activity and its last heartbeat instead, and says so
("source": "describe" in --json).

Examples:
  kiln status train-spirals-3k9x2a
  kiln status train-spirals-3k9x2a --json | jq .progress.line`,
    run: status,
  },
  watch: {
    summary: 'live progress of a job until it ends (exit 0 completed, 1 failed, 3 cancelled)',
    usage: `kiln watch <job> [--json] [--interval MS]

A progress bar redrawn in place on a terminal (epoch, step, loss, ETA, GPU util); plain lines, one per
change, when stdout is not a terminal; JSON lines with --json. Exits with the job's outcome:
0 completed, 1 failed, 3 cancelled.

Examples:
  kiln watch train-spirals-3k9x2a
  kiln watch train-spirals-3k9x2a > progress.log && echo trained`,
    run: watch,
  },
  list: {
    summary: 'jobs from Temporal visibility, filtered by model, phase, trigger, age',
    usage: `kiln list [--model M] [--phase P] [--trigger manual|schedule|backfill] [--since 1d] [--limit N] [--json]

Phases: ${PHASES.join(', ')}.
The same filter works in the Web UI and the Temporal CLI (docs/operations.md).

Examples:
  kiln list
  kiln list --model spirals --phase training
  kiln list --since 6h --json | jq -r '.[].jobId'`,
    run: listVerb,
  },
  cancel: {
    summary: 'cancel a job (the trainer checkpoints and exits)',
    usage: `kiln cancel <job> [--reason TEXT] [--wait [--timeout MS]] [--json]

Sends the cancel signal; the job ends as cancelled once the trainer is gone. Exit 1 if the job
already ended. --wait returns when the job has closed.

Examples:
  kiln cancel train-spirals-3k9x2a --reason "wrong lr"
  kiln cancel train-spirals-3k9x2a --wait`,
    run: signalVerb('cancel'),
  },
  pause: {
    summary: 'pause a training job: checkpoint, free the GPU, wait for resume',
    usage: `kiln pause <job> [--wait [--timeout MS]] [--json]

Only a job in phase training can be paused (exit 1 otherwise). --wait returns once it shows paused.

Examples:
  kiln pause train-spirals-3k9x2a --wait
  kiln resume train-spirals-3k9x2a`,
    run: signalVerb('pause'),
  },
  resume: {
    summary: 'resume a paused job from its pause checkpoint',
    usage: `kiln resume <job> [--wait [--timeout MS]] [--json]

Only a paused job can be resumed (exit 1 otherwise). --wait returns once it left the paused phase.

Example:
  kiln resume train-spirals-3k9x2a --wait`,
    run: signalVerb('resume'),
  },
  logs: {
    summary: "a job's trainer log (stdout and stderr of the trainer, all attempts)",
    usage: `kiln logs <job> [--follow] [-n LINES] [--json]

Reads <artifacts.root>/jobs/<job>/trainer.log. --follow keeps printing until the job ends.
--json prints {"jobId", "line"} objects, one per line.

Examples:
  kiln logs train-spirals-3k9x2a -n 50
  kiln logs train-spirals-3k9x2a --follow`,
    run: logs,
  },
};

export { jobSummary };
