/**
 * Long jobs stay inside Temporal's history limits (issue 16, item 8): a real dev server with lowered
 * history limits (suggest continue-as-new at 100 events, warn at 200, terminate at 300) and the
 * example trainer checkpointing every step. The job continues as new (same workflow id, new run ids),
 * keeps answering queries, `kiln status` and `kiln watch` follow it, a pause accepted in one run is
 * still in force in the next (which a resume Update then lifts), and it completes with one registry
 * version and every step trained once: the attempts stopped for a rollover lost 0 steps. Every run's
 * history is replayed. And the reports an attempt sends stay within their budget however fast the
 * trainer checkpoints.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { controlJob } from '../src/client/jobs';
import { buildSpec } from '../src/config/spec';
import { registryPath } from '../src/registry/open';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { progressQuery, reportSignal } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { workflowSource } from '../workers/common';
import { REPORT_BURST } from '../activities/train/progress';
import { defaultConfigYaml, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';
import { runKiln } from './helpers/processes';

const ERROR_LIMIT = 300;
const UNHANDLED_COMMAND = temporal.api.enums.v1.WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND;
const SERVER_ARGS = [
  ...['--dynamic-config-value', 'limit.historyCount.suggestContinueAsNew=100'],
  ...['--dynamic-config-value', 'limit.historyCount.warn=200'],
  ...['--dynamic-config-value', `limit.historyCount.error=${ERROR_LIMIT}`],
];
const STEPS = 400;
const LONG_MODEL = `  long:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 4, steps_per_epoch: 100, step_delay_ms: 100, checkpoint_every: 1 }
    pool: gpu
    gpus: 1`;

describe('history: a job that checkpoints every step continues as new and completes', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: LONG_MODEL }), { serverArgs: SERVER_ARGS });
    await env.startControlWorker();
    await env.startGpuWorker();
  });
  after(async () => env?.cleanup());

  test('continues as new across runs, keeps answering, pause/resume across the boundary, one version, no steps lost', async (t) => {
    const h = await env.submit('long');
    const id = h.workflowId;
    const firstRun = (h as WorkflowHandle & { firstExecutionRunId: string }).firstExecutionRunId;
    const latest = env.client.workflow.getHandle(id);
    const watching = runKiln(env, ['watch', id, '--json', '--interval', '500'], { timeoutMs: 300_000 });

    // Training alone fills the first run's history: the server suggests continue-as-new, the job stops
    // its attempt (the trainer checkpoints on SIGTERM) and continues under the same id.
    const secondRun = await waitFor(async () => {
      const d = await latest.describe();
      return d.runId !== firstRun && d.status.name === 'RUNNING' ? d.runId : null;
    }, 120_000, 'the first continue-as-new');
    const p = await waitFor(async () => {
      const q = await latest.query(progressQuery);
      return q.phase === 'training' && (q.attemptLog ?? []).some((a) => a.outcome === 'continued') ? q : null;
    }, 30_000, 'the new run answering the progress query');
    const stopped = (p.attemptLog ?? []).find((a) => a.outcome === 'continued')!;
    assert.match(stopped.cause ?? '', /stopped to continue as new: the server suggested it at \d+ events/);
    assert.equal(stopped.steps_lost, 0, 'the stopped attempt checkpointed on SIGTERM');
    const status = await runKiln(env, ['status', id, '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(JSON.parse(status.stdout).workflowStatus, 'RUNNING');

    // A pause accepted by one run is still in force in the next: a flood of unknown signals fills the
    // paused run's history until it continues as new, and the new run waits paused.
    const pause = await controlJob(env.client, id, 'pause', { reason: 'look at the loss' });
    assert.equal(pause.accepted, true);
    await waitFor(async () => (await latest.query(progressQuery)).phase === 'paused', 60_000, 'paused');
    const pausedRun = (await latest.describe()).runId;
    let flood = 0;
    while ((await latest.describe()).runId === pausedRun) {
      assert.ok(flood < 200, 'the paused run continued as new within 200 signals');
      await latest.signal('kiln.nonsense', { n: flood });
      flood++;
    }
    const inNext = await waitFor(async () => {
      const q = await latest.query(progressQuery);
      return q.ignoredMessages >= flood ? q : null;
    }, 30_000, 'the next run counting the flood');
    assert.equal(inNext.phase, 'paused', 'still paused after continue-as-new');
    assert.ok(inNext.pausedAt, 'pausedAt carried');
    const resume = await controlJob(env.client, id, 'resume');
    assert.equal(resume.accepted, true, JSON.stringify(resume));
    if (pause.accepted && resume.accepted) assert.ok(resume.result.seq > pause.result.seq, 'the control sequence continues across runs');

    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, STEPS);
    assert.equal(s.registry.version, 1);
    const reg = new SqliteModelRegistry(registryPath(env.config));
    try {
      assert.equal((await reg.list({ model: 'long' })).length, 1, 'exactly one registry version');
    } finally {
      await reg.close();
    }
    const log = s.session_info.attempt_log ?? [];
    assert.ok(log.filter((a) => a.outcome === 'continued').length >= 1, JSON.stringify(log));
    for (const a of log.filter((x) => x.outcome !== 'completed')) assert.equal(a.steps_lost, 0, `attempt ${a.n} (${a.outcome}) lost steps`);
    assert.equal(s.session_info.attempts, log.length);
    assert.ok(s.session_info.cancellation_reason === null);

    // The chain: every run under the same id; all but the last continued as new; none near the limit.
    const runs: Array<{ runId: string; status: string }> = [];
    for await (const w of env.client.workflow.list({ query: `WorkflowId = "${id}"` })) runs.push({ runId: w.runId, status: w.status.name });
    assert.ok(runs.length >= 3, `runs: ${JSON.stringify(runs)}`);
    assert.ok(runs.some((r) => r.runId === secondRun));
    assert.equal(runs.filter((r) => r.status === 'COMPLETED').length, 1, JSON.stringify(runs));
    assert.equal(runs.filter((r) => r.status === 'CONTINUED_AS_NEW').length, runs.length - 1, JSON.stringify(runs));
    for (const r of runs) {
      const rh = env.client.workflow.getHandle(id, r.runId);
      const history = await rh.fetchHistory();
      const events = history.events ?? [];
      assert.ok(events.length < ERROR_LIMIT, `run ${r.runId}: ${events.length} events`);
      // A continue-as-new that raced a new signal is refused by the server (UnhandledCommand) and
      // retried with the signal: that is how no signal is lost, not a workflow bug. Nothing else fails.
      const failures = events.filter((e) => e.workflowTaskFailedEventAttributes).map((e) => e.workflowTaskFailedEventAttributes!);
      assert.deepEqual(failures.filter((f) => f.cause !== UNHANDLED_COMMAND), [], `run ${r.runId}`);
      await Worker.runReplayHistory(workflowSource(), history, `${id}-${r.runId}`);
    }

    // The final run still carries what the UI and `kiln list` read.
    const d = await latest.describe();
    assert.equal((d.memo?.summary as JobSummary).outcome, 'completed');
    assert.deepEqual(d.searchAttributes.KilnModel, ['long']);
    assert.deepEqual(d.searchAttributes.KilnPhase, ['completed']);
    t.diagnostic(`runs: ${runs.length}; static summary of the final run: ${(await d.staticSummary()) ?? '(none)'}`);
    const w = await watching;
    assert.equal(w.code, 0, w.stderr);
    const last = JSON.parse(w.stdout.trim().split('\n').at(-1)!) as { outcome: string };
    assert.equal(last.outcome, 'completed');
  });
});

describe('history: reports are coalesced whatever the checkpoint rate', () => {
  let env: KilnTestEnv;
  const INTERVAL_S = 3;
  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: LONG_MODEL }).replace('  progressInterval: 1s', `  progressInterval: ${INTERVAL_S}s`));
    await env.startControlWorker();
    await env.startGpuWorker();
  });
  after(async () => env?.cleanup());

  test('20 checkpoints a second: at most the burst + one report per interval + the final one, and the newest checkpoint known', async (t) => {
    const h = await env.submit('long', { params: { epochs: 9, steps_per_epoch: 100, step_delay_ms: 50, checkpoint_every: 1 } });
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 900);
    assert.equal(s.session_info.attempts, 1);
    const events = (await h.fetchHistory()).events ?? [];
    const reports = events.filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === reportSignal.name).length;
    const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train')!;
    const closed = events.find((e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(scheduled.eventId))!;
    const seconds = Math.ceil((tsToMs(closed.eventTime) - tsToMs(scheduled.eventTime)) / 1000);
    const bound = REPORT_BURST + Math.ceil(seconds / INTERVAL_S) + 1;
    t.diagnostic(`${reports} reports over a ${seconds} s attempt (bound ${bound}); ${events.length} events in all`);
    assert.ok(reports >= 1, 'the attempt reported');
    assert.ok(reports <= bound, `${reports} reports over ${seconds} s; the budget allows ${bound}`);
    // The final report (and the result) carry the newest checkpoint.
    assert.equal(s.artifacts.last_checkpoint?.step, 900);
  });

  test('a TrainingJob started by hand with a made-up second argument fails at once, saying why', async () => {
    const spec = buildSpec(env.config, 'long', {});
    const h = await env.client.workflow.start('TrainingJob', { taskQueue: env.controlQueue, workflowId: `train-long-forged-${Date.now()}`, args: [spec, { kind: 'kiln.continued', runs: 'x' }] });
    const err = await h.result().then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError, String(err));
    assert.match(String(err.cause?.message), /invalid second argument to TrainingJob: prepared: missing or not a prepared job; job: missing or not a job state; budget: missing; runs: not a number; start a job with its spec only \(kiln submit\)/);
  });
});
