/**
 * Retraining verbs: `kiln schedules sync|list|pause|unpause|trigger|backfill` and `kiln train`.
 * The schedules are ordinary Temporal Schedules: `temporal schedule list|describe|trigger|toggle` and
 * the Web UI see and control the same objects.
 */
import type { Client } from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import { parseDuration } from '../shared/duration';
import { UsageError } from '../shared/errors';
import type { JobSummary } from '../shared/summary';
import type { RetrainResult, RetrainState } from '../shared/retrain';
import { backfillSchedule, listSchedules, OVERLAP_POLICIES, pauseSchedule, syncSchedules, syncSummary, triggerSchedule, unpauseSchedule } from '../client/schedules';
import { awaitRetrainDecision, startRetrain } from '../client/retrain';
import { connectClient } from '../temporal/connect';
import { bool, parseArgs, str } from './args';
import type { CliContext, Verb } from './verb';

async function withClient<T>(config: KilnConfig, fn: (c: Client) => Promise<T>): Promise<T> {
  const client = await connectClient(config);
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

/** An ISO time, or a duration meaning "that long ago" (`2h` → two hours before now). */
function timeArg(v: string | undefined, flag: string, fallback?: Date): Date {
  if (v === undefined) {
    if (fallback) return fallback;
    throw new UsageError(`kiln schedules backfill: ${flag} is required (an ISO time like 2024-05-01T00:00:00Z, or a duration ago like 6h)`);
  }
  const ago = parseDuration(v);
  if (ago !== undefined && typeof v === 'string' && !/^\d+$/.test(v)) return new Date(Date.now() - ago);
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new UsageError(`kiln schedules backfill: ${flag} "${v}" is neither an ISO time (2024-05-01T00:00:00Z) nor a duration ago (6h)`);
  return new Date(t);
}

function modelArg(p: { positional: string[] }, sub: string): string {
  const m = p.positional[1];
  if (!m) throw new UsageError(`kiln schedules ${sub}: which model? e.g. kiln schedules ${sub} spirals (see kiln schedules list)`);
  return m;
}

const SCHEDULES_USAGE = `kiln schedules <sync|list|pause|unpause|trigger|backfill> [options]

Retraining schedules from temporal.yaml (models.<m>.retrain), as Temporal Schedules with ids
kiln-retrain-<model>. Each fire starts the RetrainModel workflow, which trains only when needed and
never twice for the same data version.

  sync [--dry-run] [--json]            make the server match temporal.yaml (create, update, delete
                                       Kiln-owned schedules); a second run changes nothing
  list [--json]                        schedules, paused state and note, next fire times
  pause <model> [--note TEXT] [--json]
  unpause <model> [--note TEXT] [--json]
  trigger <model> [--json]             fire now, with overlap SKIP (a running retrain wins)
  backfill <model> --start T [--end T] [--overlap skip|buffer-one|buffer-all|allow-all] [--json]
                                       take the fires of a past range now (T: ISO time or "6h" ago;
                                       --end defaults to now, --overlap to skip)
  --task-queue Q                       queue of the schedules' RetrainModel runs (sync, list;
                                       default kiln-control)

Examples:
  kiln schedules sync
  kiln schedules list
  kiln schedules pause spirals --note "dataset migration until Friday"
  kiln schedules trigger spirals
  kiln schedules backfill spirals --start 2024-05-01T00:00:00Z --end 2024-05-02T00:00:00Z

The same with the Temporal CLI:
  temporal schedule list
  temporal schedule describe --schedule-id kiln-retrain-spirals
  temporal schedule trigger --schedule-id kiln-retrain-spirals --overlap-policy Skip
  temporal schedule toggle --schedule-id kiln-retrain-spirals --pause --reason "..."`;

async function schedules(ctx: CliContext): Promise<number> {
  const p = parseArgs(
    ctx.argv,
    { json: { type: 'bool' }, 'dry-run': { type: 'bool' }, note: { type: 'string' }, start: { type: 'string' }, end: { type: 'string' }, overlap: { type: 'string' }, 'task-queue': { type: 'string' } },
    'schedules',
  );
  const sub = p.positional[0];
  const json = bool(p, 'json');
  const taskQueue = str(p, 'task-queue');
  const subs = ['sync', 'list', 'pause', 'unpause', 'trigger', 'backfill'];
  if (!sub || !subs.includes(sub)) throw new UsageError(`kiln schedules: say what to do: ${subs.join(' | ')} (see kiln schedules --help)`);
  const config = ctx.config();
  return withClient(config, async (client) => {
    switch (sub) {
      case 'sync': {
        const r = await syncSchedules(client, config, { taskQueue, dryRun: bool(p, 'dry-run') });
        ctx.out(json ? JSON.stringify(r) : syncSummary(r));
        return r.conflicts.length ? 1 : 0;
      }
      case 'list': {
        const { rows, missing } = await listSchedules(client, config, { taskQueue });
        if (json) {
          ctx.out(JSON.stringify({ schedules: rows, missing }));
          return 0;
        }
        if (!rows.length && !missing.length) ctx.out('(no Kiln schedules; add models.<m>.retrain to temporal.yaml and run kiln schedules sync)');
        for (const r of rows) {
          const flags = [r.paused ? 'PAUSED' : 'active', r.inConfig ? (r.stale ? 'differs from temporal.yaml: run kiln schedules sync' : '') : 'not in temporal.yaml: sync deletes it'].filter(Boolean).join(', ');
          ctx.out(`${r.scheduleId}  ${r.spec}  (${flags})`);
          if (r.note) ctx.out(`  note:  ${r.note}`);
          ctx.out(`  next:  ${r.paused ? '(paused)' : r.nextActionTimes.slice(0, 3).join(', ') || '-'}`);
          const last = r.recentActions[r.recentActions.length - 1];
          ctx.out(`  fired: ${r.numActionsTaken} time(s)${last ? `, last ${last.takenAt} → ${last.workflowId}` : ''}; skipped (overlap) ${r.numActionsSkippedOverlap}, missed (catch-up window) ${r.numActionsMissedCatchupWindow}`);
          const dec = r.lastDecision;
          if (dec) ctx.out(`  data:  version ${dec.fingerprint}${dec.dataset ? ` (${dec.dataset.detail})` : ''} → ${dec.outcome}: ${dec.reason}`);
        }
        for (const id of missing) ctx.out(`${id}  (in temporal.yaml, not on the server: run kiln schedules sync)`);
        return 0;
      }
      case 'pause':
      case 'unpause': {
        const id = await (sub === 'pause' ? pauseSchedule : unpauseSchedule)(client, modelArg(p, sub), str(p, 'note'));
        ctx.out(json ? JSON.stringify({ scheduleId: id, paused: sub === 'pause', note: str(p, 'note') ?? null }) : `${id} ${sub}d${str(p, 'note') ? `: ${str(p, 'note')}` : ''}`);
        return 0;
      }
      case 'trigger': {
        const id = await triggerSchedule(client, modelArg(p, sub));
        ctx.out(json ? JSON.stringify({ scheduleId: id, triggered: true, overlap: 'SKIP' }) : `${id} triggered (overlap SKIP: if a retrain of this model is running, this fire is skipped)`);
        return 0;
      }
      case 'backfill': {
        const model = modelArg(p, sub);
        const ov = (str(p, 'overlap') ?? 'skip').toLowerCase();
        const overlap = OVERLAP_POLICIES[ov];
        if (!overlap) throw new UsageError(`kiln schedules backfill: --overlap "${ov}" is not one of ${Object.keys(OVERLAP_POLICIES).join(', ')}`);
        const start = timeArg(str(p, 'start'), '--start');
        const end = timeArg(str(p, 'end'), '--end', new Date());
        const id = await backfillSchedule(client, model, { start, end, overlap });
        ctx.out(json ? JSON.stringify({ scheduleId: id, start: start.toISOString(), end: end.toISOString(), overlap }) : `${id} backfilling ${start.toISOString()} → ${end.toISOString()} (overlap ${overlap})`);
        return 0;
      }
    }
    return 2;
  });
}

function decisionLine(s: RetrainState | RetrainResult): string {
  const outcome = 'outcome' in s ? s.outcome : null;
  if (outcome === 'skipped') return `skipped: ${s.reason}`;
  if (outcome === 'deduped') return `not started: ${s.reason}`;
  return `training ${s.childId}: ${s.reason}`;
}

async function train(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { force: { type: 'bool' }, wait: { type: 'bool' }, json: { type: 'bool' }, 'task-queue': { type: 'string' } }, 'train');
  const model = p.positional[0];
  if (!model) throw new UsageError('kiln train: which model? e.g. kiln train spirals (models are in temporal.yaml)');
  const json = bool(p, 'json');
  const config = ctx.config();
  return withClient(config, async (client) => {
    const h = await startRetrain(client, config, model, { force: bool(p, 'force'), taskQueue: str(p, 'task-queue') });
    if (!json) ctx.out(`RetrainModel ${h.workflowId} started${bool(p, 'force') ? ' (--force: need-checks skipped, dedupe still applies)' : ''}`);
    const decided = await awaitRetrainDecision(client, h.workflowId);
    if (!json) ctx.out(decisionLine(decided));
    if (!bool(p, 'wait')) {
      if (json) ctx.out(JSON.stringify({ retrainId: h.workflowId, outcome: decided.outcome ?? 'training', reason: decided.reason, childId: decided.childId, fingerprint: decided.fingerprint }));
      return 0;
    }
    let result: RetrainResult;
    try {
      result = await h.result();
    } catch (err) {
      const msg = (err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message;
      ctx.out(json ? JSON.stringify({ retrainId: h.workflowId, outcome: 'failed', error: msg, childId: decided.childId }) : `failed: ${msg}`);
      return 1;
    }
    // Deduped against a training still running: attach to it, so --wait means "until that data version is trained".
    let training: JobSummary | null = result.training;
    if (result.outcome === 'deduped' && result.childId) {
      const child = client.workflow.getHandle(result.childId);
      if ((await child.describe()).status.name === 'RUNNING') {
        if (!json) ctx.out(`waiting for ${result.childId} …`);
        try {
          training = (await child.result()) as JobSummary;
        } catch (err) {
          ctx.out(json ? JSON.stringify({ ...result, training: null, error: (err as Error).message }) : `${result.childId} failed: ${(err as Error).message}`);
          return 1;
        }
      }
    }
    if (json) ctx.out(JSON.stringify({ retrainId: h.workflowId, ...result, training }));
    else if (training) ctx.out(`${training.jobId}: ${training.outcome}${training.registry.version ? ` · v${training.registry.version} ${training.registry.stage} — ${training.registry.decision}` : ''}`);
    return 0;
  });
}

export const scheduleVerbs: Record<string, Verb> = {
  schedules: { summary: 'retraining schedules: sync with temporal.yaml, list, pause, unpause, trigger, backfill', usage: SCHEDULES_USAGE, run: schedules },
  train: {
    summary: 'retrain a model now through RetrainModel (need-checks, one training per data version)',
    usage: `kiln train <model> [--force] [--wait] [--json]

Starts the RetrainModel workflow with trigger "manual", the same path a schedule takes: it
fingerprints the dataset, checks whether training is needed (models.<m>.retrain.when, minInterval),
and starts TrainingJob train-<model>-d<fingerprint>. A second train for the same data version starts
nothing and names the existing job. Prints the RetrainModel id, then the job id or the skip reason.

  --force   skip the need-checks (never the dedupe)
  --wait    wait until the training (started or found running) ends
  --task-queue Q   queue of the RetrainModel run (default kiln-control)

Examples:
  kiln train spirals
  kiln train spirals --force --wait
  kiln train spirals --json`,
    run: train,
  },
};
