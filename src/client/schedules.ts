/**
 * Retraining schedules: temporal.yaml `models.<m>.retrain` → Temporal Schedules, reconciled by
 * `syncSchedules` (create missing, update changed, delete Kiln-owned ones the config dropped), plus
 * list / pause / unpause / trigger / backfill. `kiln train` starts the same workflow through retrain.ts.
 *
 * Ownership: a schedule is Kiln's when its id is `kiln-retrain-<model>` and its memo carries
 * `kiln.owner = "kiln"`. Nothing else on the server is touched. The server cannot update a schedule's
 * memo, so the hash of the desired definition (what "changed" compares) lives in the action's memo,
 * which `update` does replace; it also ends up on every RetrainModel run the schedule starts.
 */
import { createHash } from 'node:crypto';
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleDescription,
  type ScheduleOptions,
  type ScheduleSpec,
} from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import type { RetrainConfig } from '../config/schema';
import { parseSchedule } from '../shared/cron';
import { TASK_QUEUE_CONTROL } from '../shared/messages';
import { formatDuration } from '../shared/duration';
import { ConfigError, UsageError } from '../shared/errors';
import { SCHEDULE_ID_PREFIX, scheduledRetrainId, scheduleId, type RetrainInput, type RetrainResult } from '../shared/retrain';
import { kilnSearchAttributes } from '../shared/searchAttributes';

export const OWNER = 'kiln';

export interface ScheduleTarget {
  /** Task queue the schedule's RetrainModel runs on. Default kiln-control. */
  taskQueue?: string;
}

interface ActionMemo {
  kiln: { schedule: string; hash: string; paused: boolean; text: string };
}

export interface DesiredSchedule {
  scheduleId: string;
  model: string;
  hash: string;
  paused: boolean;
  options: ScheduleOptions;
}

/** `spec` for one model; the schedule strings were validated at config load. */
function scheduleSpec(model: string, r: RetrainConfig): ScheduleSpec {
  const exprs = Array.isArray(r.schedule) ? r.schedule : [r.schedule];
  const cronExpressions: string[] = [];
  const intervals: Array<{ every: number }> = [];
  exprs.forEach((e, i) => {
    const p = parseSchedule(e);
    if ('error' in p) throw new ConfigError('temporal.yaml', [`models.${model}.retrain.schedule${Array.isArray(r.schedule) ? `.${i}` : ''}: ${p.error}`]);
    if (p.kind === 'every') intervals.push({ every: p.everyMs });
    else cronExpressions.push(p.expr);
  });
  if (r.timezone) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: r.timezone });
    } catch {
      throw new ConfigError('temporal.yaml', [`models.${model}.retrain.timezone: "${r.timezone}" is not a known IANA time zone (e.g. "Europe/Berlin", "UTC")`]);
    }
  }
  return {
    ...(cronExpressions.length ? { cronExpressions } : {}),
    ...(intervals.length ? { intervals } : {}),
    ...(r.jitter ? { jitter: r.jitter } : {}),
    ...(r.timezone ? { timezone: r.timezone } : {}),
  };
}

/** JSON with sorted keys, so the hash does not depend on property order. */
function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stable((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** What the server should hold, one entry per model with a `retrain` section. */
export function desiredSchedules(config: KilnConfig, target: ScheduleTarget = {}): DesiredSchedule[] {
  const taskQueue = target.taskQueue ?? TASK_QUEUE_CONTROL;
  const out: DesiredSchedule[] = [];
  for (const [model, m] of Object.entries(config.models)) {
    const r = m.retrain;
    if (!r) continue;
    const id = scheduleId(model);
    const spec = scheduleSpec(model, r);
    const args: [RetrainInput] = [{ model, trigger: 'schedule' }];
    const policies = { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: r.catchupWindow, pauseOnFailure: r.pauseOnFailure };
    const hash = createHash('sha256')
      .update(stable({ spec, taskQueue, workflowId: scheduledRetrainId(model), args, policies, paused: r.paused }))
      .digest('hex')
      .slice(0, 16);
    const schedules = Array.isArray(r.schedule) ? r.schedule.join(', ') : r.schedule;
    const memo: ActionMemo = { kiln: { schedule: id, hash, paused: r.paused, text: schedules } };
    out.push({
      scheduleId: id,
      model,
      hash,
      paused: r.paused,
      options: {
        scheduleId: id,
        spec,
        action: {
          type: 'startWorkflow',
          workflowType: 'RetrainModel',
          workflowId: scheduledRetrainId(model),
          taskQueue,
          args,
          memo: memo as unknown as Record<string, unknown>,
          typedSearchAttributes: kilnSearchAttributes({ model, trigger: 'schedule' }),
          staticSummary: `retrain ${model} (schedule ${schedules})`,
        },
        policies,
        memo: { kiln: { owner: OWNER, model } },
        typedSearchAttributes: kilnSearchAttributes({ model }),
        state: r.paused ? { paused: true, note: `paused by temporal.yaml (models.${model}.retrain.paused)` } : { paused: false, note: `managed by kiln (temporal.yaml models.${model}.retrain)` },
      },
    });
  }
  return out;
}

function isOwned(memo: Record<string, unknown> | undefined): boolean {
  return (memo?.kiln as { owner?: unknown } | undefined)?.owner === OWNER;
}

function actionHash(d: ScheduleDescription): { hash: string | null; paused: boolean | null } {
  const m = (d.action.memo as Partial<ActionMemo> | undefined)?.kiln;
  return { hash: m?.hash ?? null, paused: typeof m?.paused === 'boolean' ? m.paused : null };
}

async function describeOrNull(client: Client, id: string): Promise<ScheduleDescription | null> {
  try {
    return await client.schedule.getHandle(id).describe();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) return null;
    throw err;
  }
}

/** Kiln-owned schedule ids on the server (visibility: a just-created one may show up a moment late). */
export async function ownedScheduleIds(client: Client): Promise<string[]> {
  const ids: string[] = [];
  for await (const s of client.schedule.list()) {
    if (s.scheduleId.startsWith(SCHEDULE_ID_PREFIX) && isOwned(s.memo)) ids.push(s.scheduleId);
  }
  return ids.sort();
}

export interface SyncResult {
  created: string[];
  updated: string[];
  deleted: string[];
  unchanged: string[];
  /** Ids Kiln would manage but cannot: a schedule with that id exists without Kiln's memo. */
  conflicts: Array<{ scheduleId: string; problem: string }>;
  changed: boolean;
  dryRun: boolean;
}

/**
 * Makes the server's Kiln schedules match the config. Idempotent: a second run reports every schedule
 * unchanged and calls no write API. A schedule paused through the CLI or UI stays paused across syncs
 * unless `retrain.paused` itself changed in the config.
 */
export async function syncSchedules(client: Client, config: KilnConfig, o: ScheduleTarget & { dryRun?: boolean } = {}): Promise<SyncResult> {
  const desired = desiredSchedules(config, o);
  const r: SyncResult = { created: [], updated: [], deleted: [], unchanged: [], conflicts: [], changed: false, dryRun: o.dryRun ?? false };
  for (const want of desired) {
    const have = await describeOrNull(client, want.scheduleId);
    if (!have) {
      try {
        if (!r.dryRun) await client.schedule.create(want.options as never);
        r.created.push(want.scheduleId);
      } catch (err) {
        // Another sync (kiln dev starting next to a manual sync) created it a moment ago.
        if (!(err instanceof ScheduleAlreadyRunning)) throw err;
        r.unchanged.push(want.scheduleId);
      }
      continue;
    }
    if (!isOwned(have.memo)) {
      r.conflicts.push({ scheduleId: want.scheduleId, problem: `schedule ${want.scheduleId} exists but is not Kiln's (no memo kiln.owner="kiln"); delete it (temporal schedule delete --schedule-id ${want.scheduleId}) so Kiln can create its own` });
      continue;
    }
    const cur = actionHash(have);
    if (cur.hash === want.hash) {
      r.unchanged.push(want.scheduleId);
      continue;
    }
    if (!r.dryRun) {
      const pausedChanged = cur.paused !== want.paused;
      await client.schedule.getHandle(want.scheduleId).update((prev) => ({
        spec: want.options.spec,
        action: want.options.action,
        policies: want.options.policies,
        typedSearchAttributes: want.options.typedSearchAttributes,
        state: pausedChanged ? { paused: want.paused, note: want.options.state?.note } : { paused: prev.state.paused, note: prev.state.note },
      }));
    }
    r.updated.push(want.scheduleId);
  }
  const wanted = new Set(desired.map((d) => d.scheduleId));
  for (const id of await ownedScheduleIds(client)) {
    if (wanted.has(id)) continue;
    if (!r.dryRun) {
      try {
        await client.schedule.getHandle(id).delete();
      } catch (err) {
        // Listed from visibility, already gone on the server: nothing to do.
        if (!(err instanceof ScheduleNotFoundError)) throw err;
        continue;
      }
    }
    r.deleted.push(id);
  }
  r.changed = r.created.length + r.updated.length + r.deleted.length > 0;
  return r;
}

export function syncSummary(r: SyncResult): string {
  const parts: string[] = [];
  if (r.created.length) parts.push(`created ${r.created.join(', ')}`);
  if (r.updated.length) parts.push(`updated ${r.updated.join(', ')}`);
  if (r.deleted.length) parts.push(`deleted ${r.deleted.join(', ')}`);
  const verb = r.dryRun ? 'would change' : 'changed';
  const head = r.changed ? `schedules ${verb}: ${parts.join('; ')}` : `schedules in sync: nothing to change${r.unchanged.length ? ` (${r.unchanged.length} unchanged: ${r.unchanged.join(', ')})` : ' (no model has a retrain section)'}`;
  const tail = r.conflicts.map((c) => `\n  conflict: ${c.problem}`).join('');
  return head + tail;
}

export interface ScheduleRow {
  scheduleId: string;
  model: string | null;
  inConfig: boolean;
  paused: boolean;
  note: string | null;
  spec: string;
  nextActionTimes: string[];
  recentActions: Array<{ scheduledAt: string; takenAt: string; workflowId: string }>;
  numActionsTaken: number;
  numActionsSkippedOverlap: number;
  numActionsMissedCatchupWindow: number;
  hash: string | null;
  /** True when the server's definition differs from the config (run `kiln schedules sync`). */
  stale: boolean;
  /** The newest completed RetrainModel's decision and the data version it saw (of the last few fired). */
  lastDecision: Pick<RetrainResult, 'outcome' | 'reason' | 'fingerprint' | 'dataset'> | null;
}

/** The decision of the newest completed run among the last three fired (null: none completed, or gone). */
async function lastDecision(client: Client, workflowIds: string[]): Promise<ScheduleRow['lastDecision']> {
  for (const id of workflowIds.slice(-3).reverse()) {
    try {
      const h = client.workflow.getHandle(id);
      if ((await h.describe()).status.name !== 'COMPLETED') continue;
      const r = (await h.result()) as RetrainResult;
      return { outcome: r.outcome, reason: r.reason, fingerprint: r.fingerprint, dataset: r.dataset };
    } catch {
      // aged out of retention, or not ours to read: try the one before
    }
  }
  return null;
}

function specText(d: ScheduleDescription): string {
  const parts: string[] = [];
  // The server compiles cron strings into calendar specs; the text Kiln wrote reads better.
  const text = (d.action.memo as Partial<ActionMemo> | undefined)?.kiln?.text;
  if (text) parts.push(text);
  else {
    for (const c of (d.raw.schedule?.spec?.cronString as string[] | undefined) ?? []) parts.push(c);
    for (const i of d.spec.intervals ?? []) parts.push(`@every ${formatDuration(i.every)}`);
  }
  if (!parts.length && d.spec.calendars?.length) parts.push(`${d.spec.calendars.length} calendar spec(s)`);
  if (d.spec.jitter) parts.push(`jitter ${formatDuration(d.spec.jitter)}`);
  if (d.spec.timezone) parts.push(`tz ${d.spec.timezone}`);
  return parts.join(' · ') || '-';
}

/** Kiln's schedules with next fire times (from describe), plus config models not yet synced. */
export async function listSchedules(client: Client, config: KilnConfig, o: ScheduleTarget = {}): Promise<{ rows: ScheduleRow[]; missing: string[] }> {
  const desired = new Map(desiredSchedules(config, o).map((d) => [d.scheduleId, d]));
  const ids = new Set([...(await ownedScheduleIds(client)), ...desired.keys()]);
  const rows: ScheduleRow[] = [];
  const missing: string[] = [];
  for (const id of [...ids].sort()) {
    const d = await describeOrNull(client, id);
    if (!d) {
      if (desired.has(id)) missing.push(id);
      continue;
    }
    if (!isOwned(d.memo)) continue;
    const model = ((d.memo?.kiln as { model?: string } | undefined)?.model) ?? id.slice(SCHEDULE_ID_PREFIX.length);
    const { hash } = actionHash(d);
    rows.push({
      scheduleId: id,
      model,
      inConfig: desired.has(id),
      paused: d.state.paused,
      note: d.state.note ?? null,
      spec: specText(d),
      nextActionTimes: d.info.nextActionTimes.map((t) => t.toISOString()),
      recentActions: d.info.recentActions.map((a) => ({ scheduledAt: a.scheduledAt.toISOString(), takenAt: a.takenAt.toISOString(), workflowId: a.action.workflow.workflowId })),
      numActionsTaken: d.info.numActionsTaken,
      numActionsSkippedOverlap: d.info.numActionsSkippedOverlap,
      numActionsMissedCatchupWindow: d.info.numActionsMissedCatchupWindow,
      hash,
      stale: desired.get(id)?.hash !== hash,
      lastDecision: await lastDecision(client, d.info.recentActions.map((a) => a.action.workflow.workflowId)),
    });
  }
  return { rows, missing };
}

/** Accepts a model name or a full schedule id. */
export function resolveScheduleId(modelOrId: string): string {
  return modelOrId.startsWith(SCHEDULE_ID_PREFIX) ? modelOrId : scheduleId(modelOrId);
}

async function ownedHandle(client: Client, modelOrId: string) {
  const id = resolveScheduleId(modelOrId);
  const d = await describeOrNull(client, id);
  if (!d) throw new UsageError(`no schedule ${id} on the server (is models.${id.slice(SCHEDULE_ID_PREFIX.length)}.retrain in temporal.yaml? run \`kiln schedules sync\`)`);
  if (!isOwned(d.memo)) throw new UsageError(`schedule ${id} is not Kiln's (no memo kiln.owner="kiln"); manage it with \`temporal schedule\` instead`);
  return client.schedule.getHandle(id);
}

export async function pauseSchedule(client: Client, modelOrId: string, note?: string): Promise<string> {
  const h = await ownedHandle(client, modelOrId);
  await h.pause(note?.trim() || 'paused with kiln schedules pause');
  return h.scheduleId;
}

export async function unpauseSchedule(client: Client, modelOrId: string, note?: string): Promise<string> {
  const h = await ownedHandle(client, modelOrId);
  await h.unpause(note?.trim() || 'unpaused with kiln schedules unpause');
  return h.scheduleId;
}

/** Fires the schedule now, with overlap SKIP: never the SDK's ALLOW_ALL default. */
export async function triggerSchedule(client: Client, modelOrId: string): Promise<string> {
  const h = await ownedHandle(client, modelOrId);
  await h.trigger(ScheduleOverlapPolicy.SKIP);
  return h.scheduleId;
}

export const OVERLAP_POLICIES: Record<string, ScheduleOverlapPolicy> = {
  skip: ScheduleOverlapPolicy.SKIP,
  'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE,
  'buffer-all': ScheduleOverlapPolicy.BUFFER_ALL,
  'cancel-other': ScheduleOverlapPolicy.CANCEL_OTHER,
  'terminate-other': ScheduleOverlapPolicy.TERMINATE_OTHER,
  'allow-all': ScheduleOverlapPolicy.ALLOW_ALL,
};

/**
 * Takes the actions the schedule would have taken in [start, end], now. Default overlap SKIP: the
 * data is the same for every backfilled fire, so one RetrainModel at a time is all it takes.
 */
export async function backfillSchedule(client: Client, modelOrId: string, b: { start: Date; end: Date; overlap?: ScheduleOverlapPolicy }): Promise<string> {
  if (!(b.end.getTime() > b.start.getTime())) throw new UsageError(`backfill: --end (${b.end.toISOString()}) must be after --start (${b.start.toISOString()})`);
  const h = await ownedHandle(client, modelOrId);
  await h.backfill({ start: b.start, end: b.end, overlap: b.overlap ?? ScheduleOverlapPolicy.SKIP });
  return h.scheduleId;
}
