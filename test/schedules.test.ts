/**
 * Retraining on Temporal Schedules, end to end on a real dev server with real trainer processes:
 * schedules that really fire, pause, sync reconciliation, the trigger storm (exactly one TrainingJob
 * per data version, counted through visibility), need-checks and config errors.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ScheduleOverlapPolicy } from '@temporalio/client';
import { parseConfigText } from '../src/config/load';
import { ConfigError } from '../src/shared/errors';
import type { JobSummary } from '../src/shared/summary';
import { evaluateNeed, retrainStateQuery, scheduleId, trainingIdFor, type RetrainResult } from '../src/shared/retrain';
import { backfillSchedule, desiredSchedules, listSchedules, ownedScheduleIds, pauseSchedule, syncSchedules, triggerSchedule } from '../src/client/schedules';
import { startRetrain } from '../src/client/retrain';
import { defaultConfigYaml, KILN_BIN, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';

const run = promisify(execFile);

const model = (name: string, retrain: string | null, extra = '') => `  ${name}:
    trainer: example
    dataset: data/${name}.txt
    params: { epochs: 1, steps_per_epoch: 6${name === 'flaky' ? ', fault: exit2, fault_at_step: 1' : ''} }
    pool: gpu
    gpus: 1
    requiredMetrics: [val_loss, accuracy]
    promotion: { metric: val_loss, direction: min, mode: auto }${retrain ? `\n    retrain: ${retrain}` : ''}${extra}`;

const MODELS: Record<string, string | null> = {
  fire: `{ schedule: "@every 2s", catchupWindow: 10s }`,
  dormant: `{ schedule: "@every 2s", paused: true }`,
  storm: `{ schedule: "0 0 1 1 *" }`,
  cool: `{ schedule: ["0 0 1 1 *", "0 0 1 7 *"], minInterval: 1h, when: { always: true } }`,
  flaky: `{ schedule: "0 0 1 1 *", pauseOnFailure: true }`,
  data: null,
};

const yamlFor = (models: Record<string, string | null>) => defaultConfigYaml({ models: Object.entries(models).map(([n, r]) => model(n, r)).join('\n') });

describe('retraining schedules', () => {
  let env: KilnTestEnv;
  const q = () => ({ taskQueue: env.controlQueue });
  const writeData = (name: string, text: string) => {
    fs.mkdirSync(path.join(env.home, 'data'), { recursive: true });
    fs.writeFileSync(path.join(env.home, 'data', `${name}.txt`), text);
  };
  const ids = async (query: string): Promise<string[]> => {
    const out: string[] = [];
    for await (const w of env.client.workflow.list({ query })) out.push(`${w.workflowId}/${w.runId}`);
    return out;
  };
  /** Counts through visibility, once it stopped changing (it is eventually consistent). */
  const settledCount = async (query: string): Promise<number> => {
    let last = -1;
    let stable = 0;
    for (let i = 0; i < 60 && stable < 3; i++) {
      const n = (await ids(query)).length;
      stable = n === last ? stable + 1 : 0;
      last = n;
      await new Promise((r) => setTimeout(r, 500));
    }
    return last;
  };
  const kiln = (args: string[]) =>
    run(process.execPath, [KILN_BIN, ...args], { env: { ...process.env, KILN_CONFIG: env.configFile, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address, KILN_LOG_LEVEL: 'warn' } });

  before(async () => {
    env = await startKilnEnv(yamlFor(MODELS));
    for (const n of Object.keys(MODELS)) writeData(n, `${n} v1\n1,2,3\n`);
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
  });
  after(async () => {
    // Schedules live in the server, which the cleanup tears down; pause first so nothing fires meanwhile.
    for (const id of await ownedScheduleIds(env.client).catch(() => [])) await env.client.schedule.getHandle(id).pause('test cleanup').catch(() => undefined);
    await env?.cleanup();
  });

  test('an @every 2s schedule really fires, a training completes, later fires skip unchanged data; pause stops it', async () => {
    const r = await syncSchedules(env.client, env.config, q());
    assert.deepEqual(r.created.sort(), ['kiln-retrain-cool', 'kiln-retrain-dormant', 'kiln-retrain-fire', 'kiln-retrain-flaky', 'kiln-retrain-storm']);
    assert.equal(r.changed, true);

    const fire = env.client.schedule.getHandle(scheduleId('fire'));
    const first = await waitFor(async () => (await fire.describe()).info.recentActions[0], 15_000, 'the fire schedule to take an action');
    assert.match(first.action.workflow.workflowId, /^retrain-fire-\d{4}-\d\d-\d\dT/);
    const res = (await env.client.workflow.getHandle(first.action.workflow.workflowId).result()) as RetrainResult;
    assert.equal(res.outcome, 'trained', res.reason);
    assert.equal(res.trigger, 'schedule');
    assert.equal(res.childId, trainingIdFor('fire', res.fingerprint));
    assert.equal(res.training?.outcome, 'completed');
    assert.equal(res.training?.registry.stage, 'production');
    const child = await env.client.workflow.getHandle(res.childId!).describe();
    const sa = (n: string) => child.typedSearchAttributes.getAll().find((p) => p.key.name === n)?.value;
    assert.equal(sa('KilnModel'), 'fire');
    assert.equal(sa('KilnTrigger'), 'schedule');
    assert.equal(sa('KilnPhase'), 'completed');
    // A scheduled run's id carries its fire time (with `:`): kiln status takes it.
    const runStatus = await kiln(['status', first.action.workflow.workflowId]);
    assert.match(runStatus.stdout, new RegExp(`^${first.action.workflow.workflowId}  trained  \\(RetrainModel for model fire, schedule, workflow COMPLETED\\)`));
    assert.match(runStatus.stdout, new RegExp(`training: {3}${res.childId}`));

    // The next fire finds production trained on this data and records a skip.
    const skipped = await waitFor(
      async () => {
        for (const a of (await fire.describe()).info.recentActions) {
          if (a.action.workflow.workflowId === first.action.workflow.workflowId) continue;
          const h = env.client.workflow.getHandle(a.action.workflow.workflowId);
          if ((await h.describe()).status.name !== 'COMPLETED') continue;
          const rr = (await h.result()) as RetrainResult;
          if (rr.outcome === 'skipped') return { rr, h };
        }
        return undefined;
      },
      20_000,
      'a later fire to skip',
    );
    assert.match(skipped.rr.reason, /^data unchanged since v1 \(fingerprint [0-9a-f]{8}…\)$/);
    const meta = (await skipped.h.query('__temporal_workflow_metadata')) as { currentDetails: string };
    assert.equal(meta.currentDetails, `skipped: ${skipped.rr.reason}`);

    await pauseSchedule(env.client, 'fire', 'paused by test');
    const d0 = await fire.describe();
    assert.equal(d0.state.paused, true);
    assert.equal(d0.state.note, 'paused by test');
    await new Promise((r) => setTimeout(r, 5000));
    const d1 = await fire.describe();
    assert.equal(d1.info.numActionsTaken, d0.info.numActionsTaken, 'a paused schedule takes no action');
    assert.equal(await settledCount('WorkflowType = "TrainingJob" AND KilnModel = "fire"'), 1);
  });

  test('a schedule paused in temporal.yaml does not fire', async () => {
    const h = env.client.schedule.getHandle(scheduleId('dormant'));
    const d = await h.describe();
    assert.equal(d.state.paused, true);
    assert.match(d.state.note ?? '', /models\.dormant\.retrain\.paused/);
    await new Promise((r) => setTimeout(r, 4500));
    const d2 = await h.describe();
    assert.equal(d2.info.numActionsTaken, 0);
    assert.deepEqual(await ids('WorkflowType = "RetrainModel" AND KilnModel = "dormant"'), []);
  });

  test('storm: 50 concurrent manual retrains + 20 schedule triggers for one data version start exactly one TrainingJob', async () => {
    const starts = Array.from({ length: 50 }, () => startRetrain(env.client, env.config, 'storm', q()));
    const triggers = Array.from({ length: 20 }, () => triggerSchedule(env.client, 'storm'));
    const handles = await Promise.all(starts);
    await Promise.all(triggers);
    const results = (await Promise.all(handles.map((h) => h.result()))) as RetrainResult[];
    // Runs the schedule started: wait until none is running, then read their results too.
    const sched = env.client.schedule.getHandle(scheduleId('storm'));
    await waitFor(async () => (await sched.describe()).info.runningActions.length === 0, 60_000, 'scheduled storm runs to finish');
    for (const a of (await sched.describe()).info.recentActions) results.push((await env.client.workflow.getHandle(a.action.workflow.workflowId).result()) as RetrainResult);
    const trained = results.filter((r) => r.outcome === 'trained');
    assert.equal(trained.length, 1, `outcomes: ${JSON.stringify(results.map((r) => r.outcome))}`);
    assert.ok(results.length > 50, 'at least one trigger started a run');
    const childId = trained[0]!.childId!;
    for (const r of results) {
      // Refused by the server (running or completed child id), or found in the registry once registered.
      if (r.outcome === 'deduped') assert.match(r.reason, new RegExp(`^already trained(/training this data version \\(${childId}\\)| this data version: v1 \\((candidate|production)\\) from ${childId})`));
      else if (r.outcome === 'skipped') assert.match(r.reason, /data unchanged since v1/);
    }
    assert.ok(results.some((r) => r.outcome === 'deduped'), 'some triggers hit the dedupe');
    assert.equal(await settledCount('WorkflowType = "TrainingJob" AND KilnModel = "storm"'), 1);
    const runs = await ids('WorkflowType = "TrainingJob" AND KilnModel = "storm"');
    assert.equal(runs[0]!.split('/')[0], childId);
  });

  test('unchanged data → recorded skip; --force still deduped; new data fingerprint → a new training', async () => {
    const h1 = await startRetrain(env.client, env.config, 'data', q());
    const r1 = (await h1.result()) as RetrainResult;
    assert.equal(r1.outcome, 'trained', r1.reason);
    assert.match(r1.reason, /^no production version yet/);
    assert.equal(r1.training?.registry.version, 1);

    // Through the real CLI: the skip and its reason come back as JSON.
    const { stdout } = await kiln(['train', 'data', '--json', '--task-queue', env.controlQueue]);
    const cli = JSON.parse(stdout.trim().split('\n').pop()!) as { retrainId: string; outcome: string; reason: string };
    assert.equal(cli.outcome, 'skipped');
    assert.equal(cli.reason, `data unchanged since v1 (fingerprint ${r1.fingerprint.slice(0, 8)}…)`);
    const meta = (await env.client.workflow.getHandle(cli.retrainId).query('__temporal_workflow_metadata')) as { currentDetails: string };
    assert.equal(meta.currentDetails, `skipped: ${cli.reason}`);

    const forced = (await (await startRetrain(env.client, env.config, 'data', { ...q(), force: true })).result()) as RetrainResult;
    assert.equal(forced.outcome, 'deduped', 'force skips the need-checks, never the dedupe');
    assert.equal(forced.childId, r1.childId);
    assert.match(forced.reason, new RegExp(`^already trained this data version: v1 \\(production\\) from ${r1.childId}; forced`));

    // Each run's KilnPhase says what it decided; kiln status and kiln list --retrains show the runs.
    const phase = async (id: string) => (await env.client.workflow.getHandle(id).describe()).typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnPhase')?.value;
    assert.equal(await phase(h1.workflowId), 'trained');
    assert.equal(await phase(cli.retrainId), 'skipped');
    const st = await kiln(['status', cli.retrainId]);
    assert.match(st.stdout, new RegExp(`^${cli.retrainId}  skipped  \\(RetrainModel for model data, manual, workflow COMPLETED\\)`));
    assert.match(st.stdout, /decision: {3}skipped: data unchanged since v1/);
    const runs = await waitFor(async () => {
      const r = JSON.parse((await kiln(['list', '--retrains', '--model', 'data', '--json'])).stdout) as Array<{ jobId: string; phase: string; endReason: string }>;
      return r.length === 3 && r.every((x) => x.phase !== 'checking') ? r : null;
    }, 20_000, 'three retrain runs of data in visibility');
    assert.deepEqual(runs.map((r) => r.phase), ['deduped', 'skipped', 'trained'], 'newest first');
    assert.equal(runs[1]!.jobId, cli.retrainId);
    assert.equal(runs[1]!.endReason, `skipped: ${cli.reason}`);

    writeData('data', 'data v2\n4,5,6\n');
    const r2 = (await (await startRetrain(env.client, env.config, 'data', q())).result()) as RetrainResult;
    assert.equal(r2.outcome, 'trained', r2.reason);
    assert.notEqual(r2.fingerprint, r1.fingerprint);
    assert.notEqual(r2.childId, r1.childId);
    assert.match(r2.reason, new RegExp(`^data changed since v1 \\(fingerprint ${r1.fingerprint.slice(0, 8)}… → ${r2.fingerprint.slice(0, 8)}…\\)`));
    assert.equal((r2.training as JobSummary).registry.version, 2);
    assert.equal(await settledCount('WorkflowType = "TrainingJob" AND KilnModel = "data"'), 2);
  });

  test('minInterval: a cooldown skip even with when.always', async () => {
    const r1 = (await (await startRetrain(env.client, env.config, 'cool', q())).result()) as RetrainResult;
    assert.equal(r1.outcome, 'trained', r1.reason);
    writeData('cool', 'cool v2\n');
    const r2 = (await (await startRetrain(env.client, env.config, 'cool', q())).result()) as RetrainResult;
    assert.equal(r2.outcome, 'skipped');
    assert.match(r2.reason, /^cooldown: last training \d+s ago, minInterval is 1h$/);
  });

  test('a failed training fails RetrainModel and pauses a pauseOnFailure schedule; the next trigger may retry that data version', async () => {
    const sched = env.client.schedule.getHandle(scheduleId('flaky'));
    await triggerSchedule(env.client, 'flaky');
    const d = await waitFor(async () => {
      const x = await sched.describe();
      return x.state.paused ? x : undefined;
    }, 30_000, 'the flaky schedule to pause itself');
    const wid = d.info.recentActions[0]!.action.workflow.workflowId;
    const failed = await env.client.workflow.getHandle(wid).describe();
    assert.equal(failed.status.name, 'FAILED');
    const childId = trainingIdFor('flaky', (await env.client.workflow.getHandle(wid).query(retrainStateQuery)).fingerprint!);
    assert.equal((await env.client.workflow.getHandle(childId).describe()).status.name, 'FAILED');
    // Failed, not completed: the same data version may be trained again (ALLOW_DUPLICATE_FAILED_ONLY).
    const again = await startRetrain(env.client, env.config, 'flaky', q());
    await assert.rejects(again.result(), (err: Error) => {
      assert.match((err.cause as Error).message, new RegExp(`^training ${childId} of flaky failed: `));
      return true;
    });
    assert.equal(await settledCount(`WorkflowType = "TrainingJob" AND WorkflowId = "${childId}"`), 2);
  });

  test('backfill: past fires run now, recorded with KilnTrigger=backfill', async () => {
    const start = new Date(Date.now() - 3_600_000);
    await backfillSchedule(env.client, 'fire', { start, end: new Date(start.getTime() + 5000), overlap: ScheduleOverlapPolicy.SKIP });
    const hit = await waitFor(async () => (await ids('WorkflowType = "RetrainModel" AND KilnModel = "fire" AND KilnTrigger = "backfill"'))[0], 20_000, 'a backfilled RetrainModel in visibility');
    const wid = hit.split('/')[0]!;
    const nominal = Date.parse(wid.slice('retrain-fire-'.length));
    assert.ok(nominal >= start.getTime() - 1000 && nominal <= start.getTime() + 6000, `nominal time of ${wid}`);
    const r = (await env.client.workflow.getHandle(wid).result()) as RetrainResult;
    assert.equal(r.trigger, 'backfill');
    assert.equal(r.outcome, 'skipped');
  });

  test('sync is idempotent, updates a changed schedule, removes one deleted from the config, leaves foreign ones alone', async () => {
    const again = await syncSchedules(env.client, env.config, q());
    assert.equal(again.changed, false, JSON.stringify(again));
    assert.equal(again.unchanged.length, 5);
    // The CLI agrees and lists next fire times.
    const { stdout } = await kiln(['schedules', 'sync', '--task-queue', env.controlQueue]);
    assert.match(stdout, /schedules in sync: nothing to change \(5 unchanged/);
    const listed = JSON.parse((await kiln(['schedules', 'list', '--json', '--task-queue', env.controlQueue])).stdout) as { schedules: Array<{ scheduleId: string; paused: boolean; nextActionTimes: string[]; stale: boolean }> };
    const storm = listed.schedules.find((s) => s.scheduleId === 'kiln-retrain-storm')!;
    assert.ok(storm.nextActionTimes.length > 0 && Date.parse(storm.nextActionTimes[0]!) > Date.now(), JSON.stringify(storm));
    assert.equal(storm.stale, false);
    // The last fired run's decision and the data version it saw (fire was backfilled above).
    const fired = (listed.schedules as unknown as Array<{ scheduleId: string; lastDecision: { outcome: string; fingerprint: string; dataset?: { resolver: string; detail: string } } | null }>).find((s) => s.scheduleId === 'kiln-retrain-fire')!;
    assert.match(fired.lastDecision?.fingerprint ?? '', /^[0-9a-f]{16}$/, JSON.stringify(fired));
    assert.equal(fired.lastDecision?.dataset?.resolver, 'metadata');
    const text = (await kiln(['schedules', 'list', '--task-queue', env.controlQueue])).stdout;
    assert.match(text, /kiln-retrain-fire[\s\S]*? {2}data: {2}version [0-9a-f]{16} \(1 file, \d+ B \(metadata\)\) → (skipped|trained|deduped): /);

    // Not Kiln's: same prefix, no memo. Sync must neither delete nor adopt it.
    await env.client.schedule.create({
      scheduleId: 'kiln-retrain-foreign',
      spec: { intervals: [{ every: '1h' }] },
      action: { type: 'startWorkflow', workflowType: 'RetrainModel', taskQueue: 'nowhere', args: [{ model: 'foreign', trigger: 'schedule' }] },
      state: { paused: true },
    });

    const { cool: _dropped, ...rest } = MODELS;
    const smaller = parseConfigText(yamlFor({ ...rest, storm: `{ schedule: "0 0 1 1 *", catchupWindow: 5m }` }), env.configFile, { KILN_HOME: env.home });
    const r = await syncSchedules(env.client, smaller, q());
    assert.deepEqual(r.deleted, ['kiln-retrain-cool']);
    assert.deepEqual(r.updated, ['kiln-retrain-storm']);
    assert.deepEqual(r.created, []);
    assert.equal((await env.client.schedule.getHandle('kiln-retrain-storm').describe()).policies.catchupWindow, 300_000);
    await assert.rejects(env.client.schedule.getHandle('kiln-retrain-cool').describe(), /not found/i);
    await env.client.schedule.getHandle('kiln-retrain-foreign').describe();
    assert.equal((await syncSchedules(env.client, smaller, q())).changed, false);

    // Paused with the CLI in the first test: an update of other fields keeps it paused, with its note.
    const back = await syncSchedules(env.client, env.config, q());
    assert.deepEqual(back.created, ['kiln-retrain-cool']);
    assert.deepEqual(back.updated, ['kiln-retrain-storm']);
    const fire = await env.client.schedule.getHandle('kiln-retrain-fire').describe();
    assert.equal(fire.state.paused, true);
    assert.equal(fire.state.note, 'paused by test');
    assert.equal((await syncSchedules(env.client, env.config, q())).changed, false);
  });

  test('an invalid cron is a config error naming its path, and no schedule is touched', async () => {
    const snapshot = async () => {
      const { rows } = await listSchedules(env.client, env.config, q());
      const out: Record<string, unknown> = {};
      for (const row of rows) {
        const d = await env.client.schedule.getHandle(row.scheduleId).describe();
        out[row.scheduleId] = { hash: row.hash, paused: d.state.paused, updated: d.info.lastUpdatedAt?.toISOString() ?? null };
      }
      return out;
    };
    const before = await snapshot();
    const bad = yamlFor({ ...MODELS, storm: `{ schedule: "61 * * * *" }` });
    assert.throws(
      () => parseConfigText(bad, env.configFile, { KILN_HOME: env.home }),
      (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('models.storm.retrain.schedule: "61 * * * *" is not a valid cron expression (minute: 61 is out of range')),
    );
    const badFile = path.join(env.home, 'bad.yaml');
    fs.writeFileSync(badFile, bad);
    await assert.rejects(kiln(['--config', badFile, 'schedules', 'sync', '--task-queue', env.controlQueue]), (err: { code?: number; stderr?: string }) => {
      assert.equal(err.code, 1);
      assert.match(err.stderr ?? '', /models\.storm\.retrain\.schedule: "61 \* \* \* \*" is not a valid cron expression/);
      return true;
    });
    assert.deepEqual(await snapshot(), before);
    // Sanity: the desired set of the good config still builds.
    assert.equal(desiredSchedules(env.config, q()).length, 5);
  });
});

describe('need-checks (pure)', () => {
  const now = Date.parse('2024-05-10T00:00:00Z');
  const prod = { version: 7, datasetFingerprint: 'ab12cd34ef56ab12', createdAt: '2024-05-01T00:00:00Z' };
  const base = { dataChanged: true, maxAgeMs: null, always: false, minIntervalMs: 0 };
  const facts = { fingerprint: 'ab12cd34ef56ab12', production: prod, lastTrainedAt: prod.createdAt, nowMs: now };

  test('maxAge trains an old production on unchanged data, and skips a young one', () => {
    assert.deepEqual(evaluateNeed({ ...base, maxAgeMs: 7 * 86_400_000 }, facts, false), { train: true, reason: 'production v7 is 9d 0h old (maxAge 7d 0h)' });
    assert.deepEqual(evaluateNeed({ ...base, dataChanged: false, maxAgeMs: 30 * 86_400_000 }, facts, false), { train: false, reason: 'production v7 is 9d 0h old, under maxAge 30d 0h' });
    assert.deepEqual(evaluateNeed(base, facts, false), { train: false, reason: 'data unchanged since v7 (fingerprint ab12cd34…)' });
  });

  test('cooldown beats always and data changes; force beats the cooldown', () => {
    const recent = { ...facts, fingerprint: 'ffff000011112222', lastTrainedAt: new Date(now - 3_600_000).toISOString() };
    const policy = { ...base, always: true, minIntervalMs: 6 * 3_600_000 };
    assert.deepEqual(evaluateNeed(policy, recent, false), { train: false, reason: 'cooldown: last training 1h ago, minInterval is 6h' });
    assert.equal(evaluateNeed(policy, recent, true).train, true);
    assert.equal(evaluateNeed({ ...base, minIntervalMs: 60_000 }, recent, false).reason, 'data changed since v7 (fingerprint ab12cd34… → ffff0000…)');
  });
});
