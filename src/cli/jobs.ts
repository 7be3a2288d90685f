/**
 * Job verbs: submit, status, watch, list, cancel, pause, resume, logs. Truth comes from Temporal
 * (describe, the `progress` query, visibility), never from a table of Kiln's own.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Client, WorkflowExecutionDescription } from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import type { JobProgress } from '../defs';
import { formatDuration } from '../duration';
import { UsageError } from '../errors';
import { JobIdSchema, progressLine, type JobSummary } from '../job';
import { buildSpec, jobSummary, queryProgress, signalJob, submitJob } from '../jobs';
import { coerceParam } from '../params';
import { connectClient } from '../temporal/connect';
import { bool, int, list, parseArgs, str } from './args';
import type { CliContext, Verb } from './main';

async function withClient<T>(config: KilnConfig, fn: (c: Client) => Promise<T>): Promise<T> {
  const client = await connectClient(config);
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

function jobIdArg(p: { positional: string[] }, verb: string): string {
  const id = p.positional[0];
  if (!id) throw new UsageError(`kiln ${verb}: which job? e.g. kiln ${verb} train-spirals-3k9x2a (see kiln list)`);
  const r = JobIdSchema.safeParse(id);
  if (!r.success) throw new UsageError(`kiln ${verb}: ${r.error.issues[0]!.message} (got ${JSON.stringify(id)})`);
  return id;
}

export function parseParamFlags(config: KilnConfig, model: string, raw: string[]): Record<string, unknown> {
  const m = config.models[model];
  const decl = m ? config.trainers[m.trainer]?.params ?? {} : {};
  const out: Record<string, unknown> = {};
  for (const kv of raw) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`kiln submit: --param takes key=value, got "${kv}" (e.g. --param lr=0.01)`);
    const k = kv.slice(0, eq);
    out[k] = coerceParam(decl[k], kv.slice(eq + 1));
  }
  return out;
}

function statusText(d: WorkflowExecutionDescription): string {
  return d.status.name;
}

export interface StatusView {
  jobId: string;
  runId: string;
  workflowStatus: string;
  phase: string | null;
  source: 'query' | 'describe';
  progress: JobProgress | null;
  pendingActivity: { type: string; attempt: number; lastHeartbeatAgeSec: number | null; worker: string | null; details: unknown } | null;
  summary: JobSummary | null;
  startTime: string;
  closeTime: string | null;
}

/** describe + the progress query; without a worker to answer the query, the heartbeat details. */
export async function jobStatus(client: Client, jobId: string): Promise<StatusView> {
  const h = client.workflow.getHandle(jobId);
  const d = await h.describe();
  const phase = (d.typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnPhase')?.value as string | undefined) ?? null;
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
      details,
    };
  }
  let progress: JobProgress | null = null;
  let source: StatusView['source'] = 'describe';
  try {
    progress = await Promise.race([queryProgress(client, jobId), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('query timeout')), 5000))]);
    source = 'query';
  } catch {
    progress = null;
  }
  const summary = progress?.summary ?? ((d.memo as { summary?: JobSummary } | undefined)?.summary ?? null);
  return {
    jobId,
    runId: d.runId,
    workflowStatus: statusText(d),
    phase: progress?.phase ?? phase,
    source,
    progress,
    pendingActivity,
    summary,
    startTime: d.startTime.toISOString(),
    closeTime: d.closeTime?.toISOString() ?? null,
  };
}

function renderStatus(s: StatusView): string {
  const lines = [`${s.jobId}  ${s.phase ?? '?'}  (workflow ${s.workflowStatus}, from ${s.source === 'query' ? 'the progress query' : 'describe + heartbeat details: no worker answered the query'})`];
  const p = s.progress;
  if (p) {
    lines.push(`  progress:   ${p.line}`);
    lines.push(`  attempt:    ${p.attempt}   worker: ${p.workerId ?? '-'}   GPUs: ${p.gpuIds.join(',') || '-'}`);
    if (p.gpu?.length) lines.push(`  GPU:        ${p.gpu.map((g) => `#${g.index} ${g.utilizationPct ?? '?'}% ${g.memoryUsedMiB ?? '?'}/${g.memoryTotalMiB ?? '?'} MiB`).join('  ')}`);
    lines.push(`  checkpoint: ${p.lastCheckpoint ? `step ${p.lastCheckpoint.step} ${p.lastCheckpoint.path}` : '-'}  (${p.checkpoints} kept, ${(p.checkpointBytes / 1024).toFixed(1)} KiB)`);
    if (Object.keys(p.metrics).length) lines.push(`  metrics:    ${Object.entries(p.metrics).map(([k, v]) => `${k}=${v.toPrecision(4)}`).join(' ')}`);
    if (Object.keys(p.validation).length) lines.push(`  validation: ${Object.entries(p.validation).map(([k, v]) => `${k}=${v.toPrecision(4)}`).join(' ')}`);
    if (p.cancelReason) lines.push(`  cancelled:  ${p.cancelReason}`);
  }
  if (s.pendingActivity) {
    const a = s.pendingActivity;
    lines.push(`  activity:   ${a.type} attempt ${a.attempt} on ${a.worker ?? '-'}, last heartbeat ${a.lastHeartbeatAgeSec === null ? 'never' : `${a.lastHeartbeatAgeSec.toFixed(1)} s ago`}`);
    if (!p && a.details) lines.push(`  heartbeat:  ${JSON.stringify(a.details).slice(0, 300)}`);
  }
  if (s.summary) {
    const r = s.summary;
    lines.push(`  outcome:    ${r.outcome}; steps ${r.training_metrics.steps}, final loss ${r.training_metrics.final_loss ?? '-'}, ${formatDuration(r.training_metrics.duration_ms)}`);
    if (r.registry.version) lines.push(`  registry:   v${r.registry.version} ${r.registry.stage}${r.registry.complete === false ? ' (INCOMPLETE: missing ' + r.registry.missing_metrics.join(', ') + ')' : ''} — ${r.registry.decision}`);
    if (r.session_info.failure) lines.push(`  failure:    ${r.session_info.failure.split('\n')[0]}`);
  }
  return lines.join('\n');
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Polls status until the job ends; returns the exit code for its outcome (0 completed, 1 failed, 3 cancelled). */
export async function watchJob(client: Client, jobId: string, out: (t: string) => void, opts: { tty?: boolean; intervalMs?: number; json?: boolean } = {}): Promise<number> {
  const tty = opts.tty ?? Boolean(process.stdout.isTTY);
  let lastLine = '';
  for (;;) {
    let s: StatusView;
    try {
      s = await jobStatus(client, jobId);
    } catch (err) {
      out(`kiln watch: ${(err as Error).message}`);
      return 1;
    }
    const p = s.progress;
    const closed = s.workflowStatus !== 'RUNNING';
    const phase = s.summary?.outcome ?? s.phase ?? '?';
    let line: string;
    if (p && p.phase === 'training') {
      const frac = p.totalSteps ? Math.min(1, p.step / p.totalSteps) : 0;
      const width = 24;
      const bar = p.totalSteps ? `[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(frac * 100).toFixed(0).padStart(3)}% ` : '';
      const gpu = p.gpu?.length ? ` · GPU ${p.gpu.map((g) => `${g.utilizationPct ?? '?'}%`).join('/')}` : '';
      line = `${jobId} training ${bar}${progressLine({ ...p }, formatDuration)}${gpu}`;
    } else {
      line = `${jobId} ${phase}${p?.line && !p.line.startsWith(phase) ? ` · ${p.line}` : ''}`;
    }
    if (opts.json) {
      if (line !== lastLine) out(JSON.stringify({ jobId, phase, step: p?.step ?? null, totalSteps: p?.totalSteps ?? null, loss: p?.metrics.loss ?? null, etaMs: p?.etaMs ?? null }));
    } else if (tty) {
      process.stdout.write(`\r\x1b[2K${line}`);
    } else if (line !== lastLine) {
      out(line);
    }
    lastLine = line;
    if (closed || TERMINAL.has(phase)) {
      if (tty && !opts.json) process.stdout.write('\n');
      const outcome = s.summary?.outcome ?? (s.workflowStatus === 'COMPLETED' ? 'completed' : s.workflowStatus === 'CANCELLED' ? 'cancelled' : 'failed');
      if (!opts.json) out(renderStatus(s));
      return outcome === 'completed' ? 0 : outcome === 'cancelled' ? 3 : 1;
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000));
  }
}

async function submit(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { param: { type: 'list', alias: 'p' }, pool: { type: 'string' }, gpus: { type: 'string' }, watch: { type: 'bool' }, json: { type: 'bool' }, id: { type: 'string' } }, 'submit');
  const model = p.positional[0];
  if (!model) throw new UsageError('kiln submit: which model? e.g. kiln submit spirals --param lr=0.05');
  const config = ctx.config();
  const spec = buildSpec(config, model, { params: parseParamFlags(config, model, list(p, 'param')), pool: str(p, 'pool'), gpus: int(p, 'gpus', 'submit') });
  return withClient(config, async (client) => {
    const h = await submitJob(client, config, spec, { jobId: str(p, 'id') });
    if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: h.workflowId, runId: h.firstExecutionRunId, model: spec.model, params: spec.params }));
    else ctx.out(h.workflowId);
    if (bool(p, 'watch')) return watchJob(client, h.workflowId, ctx.out, { json: bool(p, 'json') });
    return 0;
  });
}

async function status(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' } }, 'status');
  const id = jobIdArg(p, 'status');
  return withClient(ctx.config(), async (client) => {
    const s = await jobStatus(client, id);
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

export async function listJobs(client: Client, f: { model?: string; phase?: string; since?: string; limit?: number }) {
  const clauses = [`WorkflowType = "TrainingJob"`];
  const q = (v: string) => JSON.stringify(v);
  if (f.model) clauses.push(`KilnModel = ${q(f.model)}`);
  if (f.phase) clauses.push(`KilnPhase = ${q(f.phase)}`);
  if (f.since) clauses.push(sinceQuery(f.since));
  const rows: Array<{ jobId: string; model: string | null; phase: string | null; trigger: string | null; status: string; start: string; close: string | null }> = [];
  for await (const w of client.workflow.list({ query: clauses.join(' AND ') })) {
    const sa = w.typedSearchAttributes;
    const get = (n: string) => (sa.getAll().find((p) => p.key.name === n)?.value as string | undefined) ?? null;
    rows.push({ jobId: w.workflowId, model: get('KilnModel'), phase: get('KilnPhase'), trigger: get('KilnTrigger'), status: w.status.name, start: w.startTime.toISOString(), close: w.closeTime?.toISOString() ?? null });
    if (rows.length >= (f.limit ?? 100)) break;
  }
  return rows;
}

async function listVerb(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { model: { type: 'string' }, phase: { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' }, json: { type: 'bool' } }, 'list');
  return withClient(ctx.config(), async (client) => {
    const rows = await listJobs(client, { model: str(p, 'model'), phase: str(p, 'phase'), since: str(p, 'since'), limit: int(p, 'limit', 'list') });
    if (bool(p, 'json')) ctx.out(JSON.stringify(rows));
    else {
      ctx.out(`${'JOB'.padEnd(36)} ${'MODEL'.padEnd(16)} ${'PHASE'.padEnd(18)} ${'TRIGGER'.padEnd(9)} STARTED`);
      for (const r of rows) ctx.out(`${r.jobId.padEnd(36)} ${(r.model ?? '-').padEnd(16)} ${(r.phase ?? '-').padEnd(18)} ${(r.trigger ?? '-').padEnd(9)} ${r.start}`);
      if (rows.length === 0) ctx.out('(no jobs match)');
    }
    return 0;
  });
}

function signalVerb(what: 'cancel' | 'pause' | 'resume'): (ctx: CliContext) => Promise<number> {
  return async (ctx) => {
    const p = parseArgs(ctx.argv, { reason: { type: 'string' }, json: { type: 'bool' } }, what);
    const id = jobIdArg(p, what);
    return withClient(ctx.config(), async (client) => {
      await signalJob(client, id, what, str(p, 'reason'));
      ctx.out(bool(p, 'json') ? JSON.stringify({ jobId: id, signal: what }) : `${what} sent to ${id}`);
      return 0;
    });
  };
}

async function logs(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { follow: { type: 'bool', alias: 'f' }, lines: { type: 'string', alias: 'n' } }, 'logs');
  const id = jobIdArg(p, 'logs');
  const config = ctx.config();
  const file = path.join(config.artifactsRoot, 'jobs', id, 'trainer.log');
  if (!fs.existsSync(file)) throw new UsageError(`kiln logs: no trainer log for ${id} at ${file} (has the job started training on this host or shared storage?)`);
  const n = int(p, 'lines', 'logs') ?? 200;
  const text = fs.readFileSync(file, 'utf8').split('\n');
  process.stdout.write(text.slice(-n - 1).join('\n'));
  if (!bool(p, 'follow')) return 0;
  let pos = fs.statSync(file).size;
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const size = fs.statSync(file).size;
    if (size > pos) {
      const fd = fs.openSync(file, 'r');
      const buf = Buffer.alloc(size - pos);
      fs.readSync(fd, buf, 0, buf.length, pos);
      fs.closeSync(fd);
      process.stdout.write(buf);
      pos = size;
    }
    const done = await withClient(config, async (c) => (await c.workflow.getHandle(id).describe()).status.name !== 'RUNNING').catch(() => false);
    if (done) return 0;
  }
}

export const jobVerbs: Record<string, Verb> = {
  submit: {
    summary: 'start a training job for a model in temporal.yaml',
    usage: `kiln submit <model> [--param k=v ...] [--pool P] [--gpus N] [--id JOB_ID] [--watch] [--json]

Validates the spec against the trainer's params schema before starting; prints the job id.
Examples:
  kiln submit spirals
  kiln submit spirals --param lr=0.05 --param epochs=20 --watch`,
    run: submit,
  },
  status: { summary: 'phase, progress, worker, checkpoint and metrics of a job', usage: 'kiln status <job> [--json]\n\nExample: kiln status train-spirals-3k9x2a', run: status },
  watch: { summary: 'live progress of a job until it ends (exit 0 completed, 1 failed, 3 cancelled)', usage: 'kiln watch <job> [--json] [--interval MS]\n\nExample: kiln watch train-spirals-3k9x2a', run: watch },
  list: {
    summary: 'jobs from Temporal visibility',
    usage: 'kiln list [--model M] [--phase P] [--since 1d] [--limit N] [--json]\n\nExample: kiln list --model spirals --phase training',
    run: listVerb,
  },
  cancel: { summary: 'cancel a job (the trainer checkpoints and exits)', usage: 'kiln cancel <job> [--reason TEXT]\n\nExample: kiln cancel train-spirals-3k9x2a --reason "wrong lr"', run: signalVerb('cancel') },
  pause: { summary: 'pause a job: checkpoint, free the GPU, wait', usage: 'kiln pause <job>', run: signalVerb('pause') },
  resume: { summary: 'resume a paused job from its pause checkpoint', usage: 'kiln resume <job>', run: signalVerb('resume') },
  logs: { summary: "a job's trainer log", usage: 'kiln logs <job> [--follow] [-n LINES]', run: logs },
};

export { jobSummary };
