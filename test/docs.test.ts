/**
 * docs/operations.md cannot rot: every ```sh operations-test block is extracted from the markdown and
 * run as written (bash, the real `temporal` binary on PATH, TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / JOB
 * in the environment) against a dev server with real jobs and a real `kiln-retrain-<model>` schedule;
 * each must exit 0, print what it promises and have its effect. A `temporal` command outside a tested
 * block, or a tested block this file does not know, fails the suite. The other shell blocks of the docs
 * (```sh docs-test) run in test/docs-run.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { staticSummary } from '../src/shared/spec';
import { buildSpec } from '../src/config/spec';
import { KilnModel, KilnTrigger } from '../src/shared/searchAttributes';
import { PROMOTED_SPIRALS_MODEL } from './helpers/fixtures';
import { fences } from './helpers/docBlocks';
import { defaultConfigYaml, startKilnEnv, temporalBinary, waitFor, type KilnTestEnv } from './helpers/kiln';


interface Block {
  id: string;
  script: string;
  line: number;
}

function extractBlocks(file: string): { tested: Block[]; untestedTemporal: string[] } {
  const tested: Block[] = [];
  const untestedTemporal: string[] = [];
  for (const f of fences(file)) {
    const m = /^sh operations-test id=([\w-]+)$/.exec(`${f.lang} ${f.info}`.trim());
    if (m) tested.push({ id: m[1]!, script: f.body.join('\n'), line: f.line });
    else untestedTemporal.push(...f.body.filter((l) => /^\s*temporal\s/.test(l)).map((l) => `line ${f.line}: ${l.trim()}`));
  }
  return { tested, untestedTemporal };
}

const MODELS = `${PROMOTED_SPIRALS_MODEL}
  gated:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 1, steps_per_epoch: 10 }
    pool: gpu
    gpus: 1
    requiredMetrics: [val_loss]
    promotion: { metric: val_loss, direction: min, mode: approval, approvalTimeout: 10m }`;

const LONG = { epochs: 500, steps_per_epoch: 10, step_delay_ms: 50 };

describe('docs/operations.md: every documented Temporal CLI command, run against a dev server', () => {
  let env: KilnTestEnv;
  const { tested, untestedTemporal } = extractBlocks('docs/operations.md');
  const ran = new Set<string>();

  /** Runs a documented block exactly as written; asserts exit 0; returns stdout. */
  async function runDoc(id: string, vars: Record<string, string> = {}): Promise<string> {
    const b = tested.find((x) => x.id === id);
    assert.ok(b, `docs/operations.md has no block id=${id}`);
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('bash', ['-euo', 'pipefail', '-c', b.script], {
        env: {
          ...process.env,
          PATH: `${path.dirname(temporalBinary())}:${process.env.PATH}`,
          TEMPORAL_ADDRESS: env.address,
          TEMPORAL_NAMESPACE: 'default',
          ...vars,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
    assert.equal(r.code, 0, `docs/operations.md:${b.line} (${id}) exited ${r.code}:\n$ ${b.script}\n${r.stdout}\n${r.stderr}`);
    ran.add(id);
    return r.stdout;
  }

  async function phase(jobId: string): Promise<string | undefined> {
    const d = await env.client.workflow.getHandle(jobId).describe();
    return d.typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnPhase')?.value as string | undefined;
  }

  /** Visibility is eventually consistent: wait until the documented query would see `jobId`. */
  async function visible(query: string, jobId: string): Promise<void> {
    await waitFor(
      async () => {
        for await (const w of env.client.workflow.list({ query })) if (w.workflowId === jobId) return true;
        return false;
      },
      30_000,
      `${jobId} in visibility for ${query}`,
      250,
    );
  }

  async function summaryOf(jobId: string): Promise<JobSummary> {
    return ((await env.client.workflow.getHandle(jobId).describe()).memo as { summary: JobSummary }).summary;
  }

  async function training(jobId: string): Promise<void> {
    await waitFor(async () => (await phase(jobId)) === 'training' && (await env.client.workflow.getHandle(jobId).query(progressQuery)).step > 0, 60_000, `${jobId} training`, 200);
  }

  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: MODELS }));
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
  });

  after(async () => {
    await env?.cleanup();
  });

  test('every temporal command in the doc is in a tested block, and each block id is unique', () => {
    assert.deepEqual(untestedTemporal, [], 'a `temporal` command outside an operations-test block would go untested');
    assert.ok(tested.length >= 15, `found ${tested.length} tested blocks`);
    assert.equal(new Set(tested.map((b) => b.id)).size, tested.length, 'duplicate block ids');
  });

  test('find and inspect a training job: list by model and phase, count, describe, queries', async () => {
    const params = LONG;
    const h = await env.submit('spirals', { params });
    const job = h.workflowId;
    await training(job);
    await visible('WorkflowType = "TrainingJob" AND KilnPhase = "training"', job);

    const byModel = await runDoc('list-model');
    assert.match(byModel, new RegExp(`Running +${job} +TrainingJob`));
    assert.match(await runDoc('list-training'), new RegExp(`${job}`));
    assert.match(await runDoc('count-by-status'), /Group total: \d+, values: Running/);

    const d = await runDoc('describe', { JOB: job });
    assert.match(d, new RegExp(`WorkflowId +${job}`));
    assert.ok(d.includes(staticSummary(buildSpec(env.config, 'spirals', { params }))), `the static summary is in describe:\n${d}`);
    assert.match(d, /KilnPhase:.*\\"training\\"/);
    assert.match(d, /Pending Activities: 1[\s\S]*Type +train[\s\S]*LastHeartbeatDetails +\[\{"attempt":1,/);

    const q = await runDoc('query-progress', { JOB: job });
    const progress = JSON.parse(/QueryResult\s+(\{.*\})/.exec(q)![1]!) as { jobId: string; phase: string; step: number; totalSteps: number; workerId: string };
    assert.equal(progress.jobId, job);
    assert.equal(progress.phase, 'training');
    assert.equal(progress.totalSteps, 5000);
    assert.ok(progress.step > 0);
    assert.match(progress.workerId, /:gpu-gpu$/);
    const s = await runDoc('query-status', { JOB: job });
    assert.match(s, /"line":"epoch \d+\/500 · step \d+\/5000/);

    // Steer it: pause → resume → cancel with a reason.
    await runDoc('signal-pause', { JOB: job });
    await waitFor(async () => (await phase(job)) === 'paused', 30_000, 'paused');
    const pausedAt = (await h.query(progressQuery)).step;
    await runDoc('signal-resume', { JOB: job });
    await waitFor(async () => (await phase(job)) === 'training' && (await h.query(progressQuery)).step > pausedAt, 30_000, 'training again past the pause step');
    await runDoc('signal-cancel', { JOB: job });
    await assert.rejects(h.result(), WorkflowFailedError);
    assert.equal((await h.describe()).status.name, 'CANCELLED');
    const sum = await summaryOf(job);
    assert.equal(sum.outcome, 'cancelled');
    assert.equal(sum.session_info.cancellation_reason, 'wrong learning rate');
    assert.deepEqual(sum.session_info.resumed_from_steps.length > 0, true, 'the resume started from the pause checkpoint');
  });

  test('steer with Updates: pause, resume and cancel answer with the phase and reason', async () => {
    const h = await env.submit('spirals', { params: LONG });
    const job = h.workflowId;
    await training(job);
    const p = await runDoc('update-pause', { JOB: job });
    assert.match(p, /pausing: the trainer checkpoints and frees its GPU/);
    assert.match(p, /accepted:true .*phase:paused/);
    await waitFor(async () => (await phase(job)) === 'paused', 30_000, 'paused');
    const pausedAt = (await h.query(progressQuery)).step;
    const r = await runDoc('update-resume', { JOB: job });
    assert.match(r, /resuming from step \d+/);
    await waitFor(async () => (await phase(job)) === 'training' && (await h.query(progressQuery)).step > pausedAt, 30_000, 'training again past the pause step');
    const c = await runDoc('update-cancel', { JOB: job });
    assert.match(c, /cancelling: done looking/);
    await assert.rejects(h.result(), WorkflowFailedError);
    assert.equal((await summaryOf(job)).session_info.cancellation_reason, 'done looking');
  });

  test('native cancel', async () => {
    const h = await env.submit('spirals', { params: LONG });
    await training(h.workflowId);
    await runDoc('cancel-native', { JOB: h.workflowId });
    await assert.rejects(h.result(), WorkflowFailedError);
    assert.equal((await h.describe()).status.name, 'CANCELLED');
    const sum = await summaryOf(h.workflowId);
    assert.equal(sum.outcome, 'cancelled');
    assert.equal(sum.session_info.cancellation_reason, 'cancelled (temporal workflow cancel)');
  });

  test('approve and reject a version waiting for approval', async () => {
    const yes = await env.submit('gated');
    const no = await env.submit('gated', { params: { seed: 2 } });
    for (const h of [yes, no]) await waitFor(async () => (await phase(h.workflowId)) === 'awaiting-approval', 60_000, `${h.workflowId} awaiting approval`, 200);
    await visible('WorkflowType = "TrainingJob" AND KilnPhase = "awaiting-approval"', no.workflowId);
    await visible('WorkflowType = "TrainingJob" AND KilnPhase = "awaiting-approval"', yes.workflowId);
    const waiting = await runDoc('list-awaiting-approval');
    assert.ok(waiting.includes(yes.workflowId) && waiting.includes(no.workflowId), waiting);

    await runDoc('signal-approve', { JOB: yes.workflowId });
    const a = (await yes.result()) as JobSummary;
    assert.equal(a.outcome, 'completed');
    assert.equal(a.registry.stage, 'production');
    assert.match(a.registry.decision ?? '', /^promoted: approved by alice \(checked the eval report\)/);

    await runDoc('signal-reject', { JOB: no.workflowId });
    const r = (await no.result()) as JobSummary;
    assert.equal(r.outcome, 'completed');
    assert.equal(r.registry.stage, 'candidate');
    assert.match(r.registry.decision ?? '', /^rejected by alice \(accuracy regressed on the holdout\): kept as candidate/);
  });

  test('schedules: list, describe, trigger (a job with KilnTrigger=schedule starts), pause and unpause with a note', async () => {
    const scheduleId = 'kiln-retrain-spirals';
    // Created here with the SDK, not through src/schedules.ts, with the action Kiln's schedules have:
    // RetrainModel, which need-checks and starts the TrainingJob (the schedule's own run id gets a
    // timestamp suffix that is not a valid job id, so a schedule never starts a TrainingJob itself).
    const sh = await env.client.schedule.create({
      scheduleId,
      spec: { cronExpressions: ['0 3 * * *'] },
      action: {
        type: 'startWorkflow',
        workflowType: 'RetrainModel',
        workflowId: 'retrain-spirals-scheduled',
        taskQueue: env.controlQueue,
        args: [{ model: 'spirals', trigger: 'schedule' }],
        typedSearchAttributes: [
          { key: KilnModel, value: 'spirals' },
          { key: KilnTrigger, value: 'schedule' },
        ] as never,
        staticSummary: 'retrain spirals (schedule)',
      },
    });
    try {
      await waitFor(async () => {
        for await (const s of env.client.schedule.list()) if (s.scheduleId === scheduleId) return true;
        return false;
      }, 30_000, 'schedule listed');
      assert.match(await runDoc('schedule-list'), new RegExp(`${scheduleId} +\\{"Workflow":"RetrainModel"\\} +false`));
      const d = await runDoc('schedule-describe');
      assert.match(d, new RegExp(`ScheduleId +${scheduleId}`));
      assert.match(d, /Action +\{"ID":"retrain-spirals-scheduled","Workflow":"RetrainModel"/);
      assert.match(d, /Paused +false/);

      await runDoc('schedule-trigger');
      const started = await waitFor(async () => (await sh.describe()).info.recentActions[0]?.action.workflow.workflowId, 30_000, 'the schedule started a workflow');
      assert.match(started, /^retrain-spirals-scheduled-/);
      const retrain = (await env.client.workflow.getHandle(started).result()) as { outcome: string; trigger: string; childId: string; training: JobSummary };
      assert.equal(retrain.outcome, 'trained', 'no production version of spirals yet: the need-check trains');
      assert.equal(retrain.trigger, 'schedule');
      assert.equal(retrain.training.outcome, 'completed');
      await visible('WorkflowType = "TrainingJob" AND KilnTrigger = "schedule"', retrain.childId);
      const scheduled = await runDoc('list-scheduled');
      assert.match(scheduled, new RegExp(`Completed +${retrain.childId} +TrainingJob`));

      await runDoc('schedule-pause');
      let st = (await sh.describe()).state;
      assert.equal(st.paused, true);
      assert.equal(st.note, 'dataset migration in progress');
      await runDoc('schedule-unpause');
      st = (await sh.describe()).state;
      assert.equal(st.paused, false);
      assert.equal(st.note, 'migration done');
    } finally {
      await sh.delete();
    }
  });

  test('every tested block in the doc was run', () => {
    assert.deepEqual(tested.map((b) => b.id).filter((id) => !ran.has(id)), [], 'documented commands no test ran');
  });
});
