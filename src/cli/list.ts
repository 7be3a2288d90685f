/**
 * `kiln list`: jobs from Temporal visibility, filtered by Kiln's search attributes. The query it runs
 * also works in the Web UI and `temporal workflow list -q`.
 */
import type { Client } from '@temporalio/client';
import { PHASES } from '../shared/progress';
import { UsageError } from '../shared/errors';
import { KilnModel, KilnPhase, KilnTrigger, readKilnSearchAttributes } from '../shared/searchAttributes';
import { bool, int, parseArgs, str } from './args';
import type { StatusView } from './status';
import { withClient, type CliContext, type Verb } from './verb';

export type JobRow = Pick<StatusView, 'jobId' | 'model' | 'phase' | 'trigger'> & { status: string; start: string; close: string | null };

export interface ListFilter {
  model?: string;
  phase?: string;
  trigger?: string;
  since?: string;
}

function sinceQuery(since: string): string {
  const m = /^(\d+)([mhd])$/.exec(since);
  if (!m) throw new UsageError(`kiln list: --since takes a duration like 30m, 6h or 1d, got "${since}"`);
  const ms = Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'm' | 'h' | 'd'];
  return `StartTime > "${new Date(Date.now() - ms).toISOString()}"`;
}

/** The visibility query `kiln list` runs; also what to paste into the Web UI or `temporal workflow list -q`. */
export function listQuery(f: ListFilter): string {
  const clauses = [`WorkflowType = "TrainingJob"`];
  const q = (v: string) => JSON.stringify(v);
  if (f.model) clauses.push(`${KilnModel.name} = ${q(f.model)}`);
  if (f.phase) {
    if (!(PHASES as readonly string[]).includes(f.phase)) throw new UsageError(`kiln list: unknown phase "${f.phase}" (phases: ${PHASES.join(', ')})`);
    clauses.push(`${KilnPhase.name} = ${q(f.phase)}`);
  }
  if (f.trigger) clauses.push(`${KilnTrigger.name} = ${q(f.trigger)}`);
  if (f.since) clauses.push(sinceQuery(f.since));
  return clauses.join(' AND ');
}

export async function listJobs(client: Client, f: ListFilter & { limit?: number }): Promise<JobRow[]> {
  const rows: JobRow[] = [];
  for await (const w of client.workflow.list({ query: listQuery(f) })) {
    const { model, phase, trigger } = readKilnSearchAttributes(w.typedSearchAttributes);
    rows.push({ jobId: w.workflowId, model, phase, trigger, status: w.status.name, start: w.startTime.toISOString(), close: w.closeTime?.toISOString() ?? null });
    if (rows.length >= (f.limit ?? 100)) break;
  }
  return rows;
}

async function list(ctx: CliContext): Promise<number> {
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

export const listVerb: Verb = {
  summary: 'jobs from Temporal visibility, filtered by model, phase, trigger, age',
  usage: `kiln list [--model M] [--phase P] [--trigger manual|schedule|backfill] [--since 1d] [--limit N] [--json]

Phases: ${PHASES.join(', ')}.
The same filter works in the Web UI and the Temporal CLI (docs/operations.md).

Examples:
  kiln list
  kiln list --model spirals --phase training
  kiln list --since 6h --json | jq -r '.[].jobId'`,
  run: list,
};
