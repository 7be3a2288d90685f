/**
 * `kiln watch`: live progress of a job until it ends. Exit codes: 0 completed, 1 failed, 3 cancelled
 * (`submit --watch` and `kiln dev --demo` use the same loop).
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { formatDuration } from '../shared/duration';
import { progressLine } from '../shared/progress';
import { firstLine, type AttemptRecord, type JobProgress } from '../shared/summary';
import { bool, int, jobIdArg, parseArgs } from './args';
import { jobStatus, outcomeOf, renderStatus, type StatusView } from './status';
import { withClient, type CliContext, type Verb } from './verb';

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Training progress as watch shows it, and whether the query's report or a newer heartbeat supplied it. */
export type CurrentProgress = Pick<JobProgress, 'step' | 'totalSteps' | 'epoch' | 'totalEpochs' | 'metrics' | 'etaMs' | 'gpu'> & { from: 'query' | 'heartbeat' };

function bar(frac: number, width = 24): string {
  return `[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(frac * 100).toFixed(0).padStart(3)}%`;
}

/**
 * The freshest training progress: the query's report (sent every workers.progressInterval), moved
 * forward by the train activity's heartbeat in describe (every ~0.5 s) when that is newer, or the
 * heartbeat alone when no worker answers the query.
 */
export function currentProgress(s: StatusView): CurrentProgress | null {
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
  // `queued: waiting for a slot in pool gpu (2/2 busy…)`, `failed: … (5 attempts)`: the line says it all.
  if (p?.line?.startsWith(`${phase}:`)) return `${s.jobId} ${p.line}`;
  return `${s.jobId} ${phase}${p?.line && !p.line.startsWith(phase) ? ` · ${p.line}` : ''}`;
}

/** `attempt 2 on host:12:gpu-gpu: worker lost (…) at step 92, resumed from 75, 2 steps lost`: how an attempt ended. */
export function attemptEndLine(a: AttemptRecord): string {
  const what = a.outcome === 'interrupted' || a.outcome === 'failed' || a.outcome === 'continued' ? firstLine(a.cause ?? a.outcome) : a.outcome;
  // Trainer failures name the step themselves (`trainer exited with code 1 at step 3`).
  const at = a.last_step !== null && !what.includes(`at step ${a.last_step}`) ? ` at step ${a.last_step}` : '';
  const lost = a.steps_lost ? `, ${a.steps_lost} step${a.steps_lost === 1 ? '' : 's'} lost` : '';
  return `attempt ${a.n}${a.worker ? ` on ${a.worker}` : ''}: ${what}${at}, ${a.resume_step ? `resumed from ${a.resume_step}` : 'from step 0'}${lost}`;
}

export interface AttemptEvent {
  key: string;
  line: string;
  attempt: AttemptRecord;
}

/**
 * The attempt events in a status not in `seen` (which it extends), oldest first: an attempt starts
 * training (its first report: `attempt 3 on host:12:gpu-gpu: training from step 90`) and ends
 * (attemptEndLine). An attempt that ended between two polls shows only its end, which says it all.
 */
export function attemptEvents(s: StatusView, seen: Set<string>): AttemptEvent[] {
  const p = s.progress;
  const log = p?.attemptLog ?? s.summary?.session_info.attempt_log ?? [];
  const out: AttemptEvent[] = [];
  const add = (key: string, line: string, attempt: AttemptRecord) => {
    if (seen.has(key)) return;
    seen.add(key);
    out.push({ key, line, attempt });
  };
  for (const a of log) {
    if (a.outcome !== 'running') add(`${a.n}:ended`, attemptEndLine(a), a);
    else if (p && p.phase === 'training' && p.attempt === a.n && p.workerId) add(`${a.n}:started`, `attempt ${a.n} on ${p.workerId}: training from step ${a.resume_step}`, a);
  }
  return out;
}

function jsonLine(s: StatusView, phase: string): string {
  const c = currentProgress(s);
  const o = { jobId: s.jobId, phase, step: c?.step ?? null, totalSteps: c?.totalSteps ?? null, epoch: c?.epoch ?? null, totalEpochs: c?.totalEpochs ?? null, loss: c?.metrics.loss ?? null, etaMs: c?.etaMs ?? null, gpu: c?.gpu ?? null, source: s.source };
  return JSON.stringify(o);
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
  const seen = new Set<string>();
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
    for (const e of attemptEvents(s, seen)) {
      if (opts.json) out(JSON.stringify({ jobId, event: 'attempt', line: e.line, attempt: e.attempt }));
      else if (tty) process.stdout.write(`\r\x1b[2K${jobId} ${e.line}\n`);
      else out(`${jobId} ${e.line}`);
    }
    const line = opts.json ? jsonLine(s, phase) : watchLine(s, tty);
    if (tty) {
      const cols = process.stdout.columns || 120;
      process.stdout.write(`\r\x1b[2K${line.slice(0, cols - 1)}`);
    } else if (line !== last) {
      out(line);
    }
    last = line;
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

async function watch(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' }, interval: { type: 'string' } }, 'watch');
  const id = jobIdArg(p, 'watch');
  return withClient(ctx.config(), (client) => watchJob(client, id, ctx.out, { json: bool(p, 'json'), intervalMs: int(p, 'interval', 'watch') }));
}

export const watchVerb: Verb = {
  summary: 'live progress of a job until it ends (exit 0 completed, 1 failed, 3 cancelled)',
  usage: `kiln watch <job> [--json] [--interval MS]

A progress bar redrawn in place on a terminal (epoch, step, loss, ETA, GPU util); plain lines, one per
change, when stdout is not a terminal; JSON lines with --json. A line per attempt event: an attempt
starts training, or ends (\`attempt 2 on <worker>: worker lost … at step 92, resumed from 75\`;
--json: {"event": "attempt", "line", "attempt"}). Exits with the job's outcome:
0 completed, 1 failed, 3 cancelled.

Examples:
  kiln watch train-spirals-3k9x2a
  kiln watch train-spirals-3k9x2a > progress.log && echo trained`,
  run: watch,
};
