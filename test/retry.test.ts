/**
 * `kiln retry` (issue 16, item 2): a failed or cancelled job starts again under its id from the state
 * its ended run answers (a query against the closed run), from its newest or a named checkpoint, with
 * fresh budgets. Real dev server, a real control worker, a GPU worker as a real process, the example
 * trainer with injected faults; and, at unit level, the attempt log carried across continue-as-new.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { registryPath } from '../src/registry/open';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { chooseRetryStep } from '../src/shared/retry';
import type { AttemptRecord, JobSummary } from '../src/shared/summary';
import { workflowSource } from '../workers/common';
import { capAttemptLog } from '../workflows/continueAsNew';
import { defaultConfigYaml, jobDir, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';
import { lastVerifiedStep, runKiln } from './helpers/processes';

const attempt = (n: number, outcome: AttemptRecord['outcome'], stepsLost: number | null): AttemptRecord => ({
  n,
  worker: 'w',
  started_at: '',
  ended_at: '',
  outcome,
  cause: null,
  resume_step: 0,
  last_step: null,
  steps_lost: stepsLost,
});

describe('the attempt log carried across continue-as-new is capped; its counts stay exact', () => {
  test('the newest 100 in full, older ones folded into counts, across several rollovers', () => {
    let log: AttemptRecord[] = [];
    let older = null;
    let n = 0;
    for (let run = 0; run < 5; run++) {
      for (let i = 0; i < 70; i++) {
        n += 1;
        log.push(attempt(n, n % 7 === 0 ? 'failed' : 'interrupted', n % 7 === 0 ? null : 2));
      }
      ({ attemptLog: log, olderAttempts: older } = capAttemptLog(log, older));
      assert.ok(log.length <= 100, `run ${run}: ${log.length} carried`);
    }
    assert.equal(log.length, 100);
    assert.deepEqual(log.map((a) => a.n), Array.from({ length: 100 }, (_, i) => 251 + i));
    assert.ok(older);
    assert.equal(older.attempts + log.length, 350);
    assert.equal(older.first, 1);
    assert.equal(older.last, 250);
    const failed = Array.from({ length: 250 }, (_, i) => i + 1).filter((x) => x % 7 === 0).length;
    assert.deepEqual(older.by_outcome, { interrupted: 250 - failed, failed });
    assert.equal(older.steps_lost, 2 * (250 - failed));
  });

  test('a short log is carried as it is', () => {
    const log = [attempt(1, 'failed', 3)];
    assert.deepEqual(capAttemptLog(log, null), { attemptLog: log, olderAttempts: null });
  });

  test('which step a retry may resume from', () => {
    const cps = [
      { step: 5, path: 'a', quarantined: false, suspect: false },
      { step: 10, path: 'b', quarantined: true, suspect: false },
      { step: 15, path: 'c', quarantined: false, suspect: true },
    ];
    assert.deepEqual(chooseRetryStep(cps, null), { ok: true, step: 5 });
    assert.deepEqual(chooseRetryStep(cps, 15), { ok: true, step: 15 });
    assert.deepEqual(chooseRetryStep(cps, 0), { ok: true, step: 0 });
    const bad = chooseRetryStep(cps, 10);
    assert.ok(!bad.ok && /checkpoint step 10 is quarantined; available steps: 5, 15/.test(bad.error), JSON.stringify(bad));
    const none = chooseRetryStep([], null);
    assert.ok(!none.ok && /no verified checkpoint.*--from-checkpoint 0/.test(none.error), JSON.stringify(none));
  });
});

describe('kiln retry: a failed or cancelled job continues from its checkpoints under the same id', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        models: `  spirals:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 15, checkpoint_every: 5, step_delay_ms: 20 }
    retention: { keepLatest: 10 }`,
        timeouts: `  heartbeat: 4s\n  stall: 20s\n  cancelGrace: 5s\n  maxAttempts: 2`,
      }),
    );
    await env.startControlWorker();
    await env.startGpuWorker({ slots: 2 });
  });
  after(async () => env?.cleanup());

  const kiln = (...args: string[]) => runKiln(env, args, { timeoutMs: 120_000 });

  async function runsOf(id: string): Promise<{ runId: string; status: string }[]> {
    const runs: { runId: string; status: string }[] = [];
    for await (const w of env.client.workflow.list({ query: `WorkflowId = "${id}"` })) runs.push({ runId: w.runId, status: w.status.name });
    return runs;
  }

  async function versions(): Promise<number> {
    const reg = new SqliteModelRegistry(registryPath(env.config));
    try {
      return (await reg.list({ model: 'spirals' })).length;
    } finally {
      await reg.close();
    }
  }

  test('unknown job: the usual wording, exit 1', async () => {
    const r = await kiln('retry', 'train-spirals-nosuch');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /no job train-spirals-nosuch in namespace .*kiln list/);
  });

  test('a job that failed (trainer crashes after a checkpoint, maxAttempts used up) resumes from its newest checkpoint and completes', async () => {
    const before = await versions();
    const h = await env.submit('spirals', { params: { fault: 'crash', fault_at_step: 12, fault_attempts: [1, 2] } });
    const id = h.workflowId;
    await assert.rejects(h.result(), (e: unknown) => e instanceof WorkflowFailedError && /maxAttempts: 2/.test(String(e.cause?.message)));
    const failedRun = (await h.describe()).runId;
    const newest = lastVerifiedStep(jobDir(env, id));
    assert.equal(newest, 10);

    const bad = await kiln('retry', id, '--from-checkpoint', '7');
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stderr, /no verified checkpoint at step 7; available steps: 5, 10 \(or 0 to train again from scratch\); nothing started/);
    assert.equal((await runsOf(id)).length, 1, 'a refused retry starts nothing');

    const r = await kiln('retry', id, '--reason', 'fixed the data', '--by', 'ann', '--json');
    assert.equal(r.code, 0, r.stderr);
    const started = JSON.parse(r.stdout) as { runId: string; previousRunId: string; previousOutcome: string; fromStep: number; checkpoints: number[] };
    assert.equal(started.previousRunId, failedRun);
    assert.equal(started.previousOutcome, 'failed');
    assert.equal(started.fromStep, 10);
    assert.deepEqual(started.checkpoints, [5, 10]);

    const s = (await env.client.workflow.getHandle(id).result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.deepEqual(s.session_info.resume, { from_step: 10, first_step: 11 });
    assert.equal(s.training_metrics.steps, 30);
    assert.equal(s.registry.version, before + 1);
    assert.equal(await versions(), before + 1, 'one registry version');
    // The attempt log carried over: two failed attempts of the first run, then the retried one.
    assert.deepEqual(s.session_info.attempt_log!.map((a) => [a.n, a.outcome]), [[1, 'failed'], [2, 'failed'], [3, 'completed']]);
    assert.equal(s.session_info.attempts, 3);
    const retries = s.session_info.retries ?? [];
    assert.equal(retries.length, 1);
    assert.deepEqual({ ...retries[0], at: undefined }, { by: 'ann', reason: 'fixed the data', from_step: 10, previous_run_id: failedRun, previous_outcome: 'failed', at: undefined, attempt: 3 });

    const runs = await runsOf(id);
    assert.deepEqual(runs.map((x) => x.status).sort(), ['COMPLETED', 'FAILED']);
    const st = await kiln('status', id);
    assert.match(st.stdout, /retried: +retried by ann \(fixed the data\) at .* after the run .* failed, from checkpoint step 10 \(attempt 3 onwards\)/);
    const meta = (await env.client.workflow.getHandle(id).query('__temporal_workflow_metadata')) as { currentDetails: string };
    assert.equal(meta.currentDetails, `completed · v${s.registry.version} ${s.registry.stage} · retried once, last by ann from step 10`);
    const d = await env.client.workflow.getHandle(id).describe();
    assert.match((await d.staticSummary()) ?? '', /retried by ann/);

    // A completed job is refused, naming its version; the retried run's history replays.
    const again = await kiln('retry', id);
    assert.equal(again.code, 1);
    assert.match(again.stderr, new RegExp(`job ${id} completed and registered version ${s.registry.version}; there is nothing to retry`));
    const history = await env.client.workflow.getHandle(id, started.runId).fetchHistory();
    await Worker.runReplayHistory(workflowSource(), history, `${id}-retried`);
    await Worker.runReplayHistory(workflowSource(), await env.client.workflow.getHandle(id, failedRun).fetchHistory(), `${id}-failed`);
  });

  test('a running job is refused; once cancelled, --from-checkpoint an older step resumes there, stepping over newer checkpoints', async () => {
    const h = await env.submit('spirals', { params: { fault: 'hang', fault_at_step: 12, fault_attempts: [1] } });
    const id = h.workflowId;
    await waitFor(() => lastVerifiedStep(jobDir(env, id)) >= 10, 60_000, 'checkpoint 10');
    const running = await kiln('retry', id);
    assert.equal(running.code, 1);
    assert.match(running.stderr, new RegExp(`job ${id} is still running; use kiln resume \\(if paused\\) or kiln cancel`));

    const c = await kiln('cancel', id, '--reason', 'hung', '--wait');
    assert.equal(c.code, 0, c.stderr);
    // Newer checkpoints than the one we go back to are on disk (10, and 12 if the SIGTERM save was announced).
    assert.ok(lastVerifiedStep(jobDir(env, id)) >= 10);
    const r = await kiln('retry', id, '--from-checkpoint', '5');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /retry started: .* after the run .* cancelled, from checkpoint step 5/);
    const s = (await env.client.workflow.getHandle(id).result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.deepEqual(s.session_info.resume, { from_step: 5, first_step: 6 });
    assert.equal(s.session_info.cancellation_reason, null, 'the cancel was the ended run’s');
    assert.equal(s.session_info.retries?.[0]?.previous_outcome, 'cancelled');
    assert.equal(s.session_info.retries?.[0]?.from_step, 5);
    assert.equal(s.session_info.attempt_log?.at(-1)?.resume_step, 5);
    assert.match(s.session_info.end_reason ?? '', /completed/);
  });

  test('a forged retry request fails the run cleanly with the reason', async () => {
    const h = await env.submit('spirals', { params: { fault: 'crash', fault_at_step: 3, fault_attempts: [1, 2] } });
    await assert.rejects(h.result());
    const d = await h.describe();
    const state = (await env.client.workflow.getHandle(h.workflowId, d.runId).query('kiln.retryState')) as { spec: unknown; carried: object };
    const forged = await env.client.workflow.start('TrainingJob', {
      taskQueue: env.controlQueue,
      workflowId: h.workflowId,
      workflowIdReusePolicy: 'ALLOW_DUPLICATE_FAILED_ONLY',
      args: [state.spec, { ...state.carried, retry: { by: 'x', reason: '', fromStep: 999, previousRunId: d.runId, previousOutcome: 'failed', at: '' } }],
    });
    await assert.rejects(forged.result(), (e: unknown) => e instanceof WorkflowFailedError && /retry: no verified checkpoint at step 999/.test(String(e.cause?.message)));
  });
});
