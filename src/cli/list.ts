/**
 * `kiln list`: jobs from Temporal visibility, filtered by Kiln's search attributes. The query it runs
 * also works in the Web UI and `temporal workflow list -q`.
 */
import type { Client } from '@temporalio/client';
import { formatDuration } from '../shared/duration';
import { PHASES } from '../shared/progress';
import { RETRAIN_PHASES, type RetrainResult } from '../shared/retrain';
import { endReason, type JobSummary } from '../shared/summary';
import { UsageError } from '../shared/errors';
import { KilnModel, KilnPhase, KilnTrigger, readKilnSearchAttributes } from '../shared/searchAttributes';
import { bool, int, parseArgs, str } from './args';
import type { StatusView } from './status';
import { withClient, type CliContext, type Verb } from './verb';

export type JobRow = Pick<StatusView, 'jobId' | 'model' | 'phase' | 'trigger'> & {
  status: string;
  start: string;
  close: string | null;
  /** Seconds since it started, and how long it ran (until now while it runs). */
  ageSec: number;
  durationSec: number;
  /** Why it ended, in words (`failed: … (5 attempts)`, `cancelled: wrong lr (by …)`); null while it runs. */
  endReason: string | null;
};

export interface ListFilter {
  model?: string;
  phase?: string;
  trigger?: string;
  since?: string;
  /** RetrainModel runs instead of training jobs. */
  retrains?: boolean;
}

function sinceQuery(since: string): string {
  const m = /^(\d+)([mhd])$/.exec(since);
  if (!m) throw new UsageError(`kiln list: --since takes a duration like 30m, 6h or 1d, got "${since}"`);
  const ms = Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'm' | 'h' | 'd'];
  return `StartTime > "${new Date(Date.now() - ms).toISOString()}"`;
}

/** The visibility query `kiln list` runs; also what to paste into the Web UI or `temporal workflow list -q`. */
export function listQuery(f: ListFilter): string {
  const clauses = [`WorkflowType = "${f.retrains ? 'RetrainModel' : 'TrainingJob'}"`];
  const q = (v: string) => JSON.stringify(v);
  if (f.model) clauses.push(`${KilnModel.name} = ${q(f.model)}`);
  if (f.phase) {
    const phases: readonly string[] = f.retrains ? RETRAIN_PHASES : PHASES;
    if (!phases.includes(f.phase)) throw new UsageError(`kiln list: unknown ${f.retrains ? 'retrain ' : ''}phase "${f.phase}" (phases: ${phases.join(', ')})`);
    clauses.push(`${KilnPhase.name} = ${q(f.phase)}`);
  }
  if (f.trigger) clauses.push(`${KilnTrigger.name} = ${q(f.trigger)}`);
  if (f.since) clauses.push(sinceQuery(f.since));
  return clauses.join(' AND ');
}

/** Why a run ended, from its memo summary (jobs) or the workflow status (anything else). */
function rowEndReason(status: string, memo: Record<string, unknown> | undefined, phase: string | null): string | null {
  if (status === 'RUNNING') return null;
  const s = memo?.summary as JobSummary | undefined;
  if (s?.session_info) return s.session_info.end_reason ?? endReason(s);
  if (status === 'TERMINATED') return 'terminated (temporal workflow terminate)';
  if (status === 'TIMED_OUT') return 'timed out (workflow run timeout)';
  return phase ?? status.toLowerCase();
}

export async function listJobs(client: Client, f: ListFilter & { limit?: number }): Promise<JobRow[]> {
  const rows: JobRow[] = [];
  const now = Date.now();
  for await (const w of client.workflow.list({ query: listQuery(f) })) {
    const { model, phase, trigger } = readKilnSearchAttributes(w.typedSearchAttributes);
    const start = w.startTime.getTime();
    const end = w.closeTime?.getTime() ?? now;
    rows.push({
      jobId: w.workflowId,
      model,
      phase,
      trigger,
      status: w.status.name,
      start: w.startTime.toISOString(),
      close: w.closeTime?.toISOString() ?? null,
      ageSec: Math.round((now - start) / 1000),
      durationSec: Math.round((end - start) / 1000),
      endReason: rowEndReason(w.status.name, w.memo, phase),
    });
    if (rows.length >= (f.limit ?? 100)) break;
  }
  // Newest first, whatever order the visibility store returns.
  return rows.sort((a, b) => b.start.localeCompare(a.start) || a.jobId.localeCompare(b.jobId));
}

const ago = (sec: number) => `${formatDuration(sec * 1000)} ago`;

/** A retrain run's decision line for its END column: the result's reason when it completed. */
async function retrainReasons(client: Client, rows: JobRow[]): Promise<void> {
  await Promise.all(
    rows
      .filter((r) => r.status === 'COMPLETED')
      .map(async (r) => {
        const res = (await client.workflow.getHandle(r.jobId).result().catch(() => null)) as RetrainResult | null;
        if (res) r.endReason = `${res.outcome}: ${res.reason}`;
      }),
  );
}

async function list(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { model: { type: 'string' }, phase: { type: 'string' }, trigger: { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' }, json: { type: 'bool' }, retrains: { type: 'bool' } }, 'list');
  if (p.positional.length) throw new UsageError(`kiln list: takes no arguments, only filters (got ${p.positional.join(' ')}); e.g. kiln list --model spirals`);
  const f = { model: str(p, 'model'), phase: str(p, 'phase'), trigger: str(p, 'trigger'), since: str(p, 'since'), limit: int(p, 'limit', 'list'), retrains: bool(p, 'retrains') };
  listQuery(f);
  return withClient(ctx.config(), async (client) => {
    const rows = await listJobs(client, f);
    if (f.retrains) await retrainReasons(client, rows);
    const what = f.retrains ? 'retrain run' : 'job';
    if (bool(p, 'json')) ctx.out(JSON.stringify(rows));
    else {
      ctx.out(`${(f.retrains ? 'RUN' : 'JOB').padEnd(34)} ${'MODEL'.padEnd(14)} ${'PHASE'.padEnd(17)} ${'TRIGGER'.padEnd(8)} ${'STATUS'.padEnd(10)} ${'STARTED'.padEnd(19)} ${'AGE'.padEnd(10)} ${'TOOK'.padEnd(8)} END`);
      for (const r of rows) {
        const cells = [r.jobId.padEnd(34), (r.model ?? '-').padEnd(14), (r.phase ?? '-').padEnd(17), (r.trigger ?? '-').padEnd(8), r.status.padEnd(10), r.start.replace('T', ' ').slice(0, 19)];
        ctx.out(`${cells.join(' ')} ${ago(r.ageSec).padEnd(10)} ${formatDuration(r.durationSec * 1000).padEnd(8)} ${r.endReason ?? '-'}`);
      }
      ctx.out(rows.length === 0 ? `(no ${what}s match)` : `${rows.length} ${what}(s), newest first${rows.length === (f.limit ?? 100) ? ' (limit reached; --limit N for more)' : ''}`);
    }
    return 0;
  });
}

export const listVerb: Verb = {
  summary: 'jobs from Temporal visibility, filtered by model, phase, trigger, age',
  usage: `kiln list [--retrains] [--model M] [--phase P] [--trigger manual|schedule|backfill] [--since 1d] [--limit N] [--json]

Newest first, with age, run time and why each ended. --retrains lists RetrainModel runs (schedules,
kiln train) with their decision instead of training jobs.
Phases: ${PHASES.join(', ')}.
Retrain phases: ${RETRAIN_PHASES.join(', ')}.
The same filter works in the Web UI and the Temporal CLI (docs/operations.md).

Examples:
  kiln list
  kiln list --model spirals --phase training
  kiln list --since 6h --json | jq -r '.[].jobId'
  kiln list --retrains --model spirals`,
  run: list,
};
