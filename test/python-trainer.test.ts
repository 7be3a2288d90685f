/**
 * The Python example trainer (examples/python-trainer, kiln_trainer kit) through the whole pipeline on
 * the real dev server: it completes and registers; a SIGKILLed worker's job resumes from the Python
 * checkpoint; a cancel makes the Python process save and exit within the grace period.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import { summaryPath, type JobSummary } from '../src/shared/summary';
import { isAlive } from '../src/supervisor/proc';
import { defaultConfigYaml, readTrainerLog, REPO, startKilnEnv, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';

const PY_TRAINER = path.join(REPO, 'examples', 'python-trainer', 'train.py');

const yaml = defaultConfigYaml({
  trainers: `  python-logreg:
    command: [python3, ${PY_TRAINER}]
    env: { PYTHONUNBUFFERED: "1" }
    params:
      epochs: { type: integer, min: 1, default: 3 }
      steps_per_epoch: { type: integer, min: 1, default: 10 }
      batch_size: { type: integer, min: 1, default: 32 }
      lr: { type: number, gt: 0, default: 0.1 }
      seed: { type: integer, min: 0, default: 1 }
      step_delay_ms: { type: integer, min: 0, default: 0 }
      checkpoint_every: { type: integer, min: 1 }
    evaluate:
      command: [python3, ${PY_TRAINER}]
      queue: control`,
  models: `  logreg-py:
    trainer: python-logreg
    dataset: synthetic://logreg/v1
    params: { epochs: 3, steps_per_epoch: 10 }
    pool: gpu
    gpus: 1
    requiredMetrics: [val_loss, accuracy]
    promotion: { metric: val_loss, direction: min, mode: auto }`,
  timeouts: `  heartbeat: 3s\n  stall: 30s\n  cancelGrace: 5s\n  maxAttempts: 5`,
});

function pythonTrainerOf(env: KilnTestEnv, jobId: string): number | undefined {
  return trainerPids(env.home).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`KILN_JOB_ID=${jobId}\0`) && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('train.py');
    } catch {
      return false;
    }
  });
}

describe('Python trainer end to end', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(yaml);
    await env.startControlWorker();
  });
  after(async () => {
    await env?.cleanup();
  });

  test('completes through evaluate and register', async () => {
    const w = await env.startGpuWorker();
    const s = (await (await env.submit('logreg-py')).result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 30);
    assert.ok(typeof s.validation_metrics.val_loss === 'number');
    assert.ok(typeof s.validation_metrics.accuracy === 'number');
    assert.equal(s.registry.complete, true);
    assert.ok(s.artifacts.model_path?.endsWith('model.json') && fs.existsSync(summaryPath(s, s.artifacts.model_path)));
    w.kill('SIGTERM');
    await w.exited;
  });

  test('worker SIGKILL: the job resumes from the Python checkpoint', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('logreg-py', { params: { epochs: 30, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 } });
    const seen = await waitFor(async () => {
      const p = await h.query(progressQuery);
      return (p.lastCheckpoint?.step ?? 0) >= 10 ? p : null;
    }, 30_000, 'a Python checkpoint');
    const oldPid = pythonTrainerOf(env, h.workflowId);
    assert.ok(oldPid, 'python trainer running');
    const b = await env.startGpuWorker({ slots: 1 });
    a.kill('SIGKILL');
    await waitFor(() => !isAlive(oldPid), 10_000, 'the orphaned python trainer to die');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 300);
    assert.ok(s.session_info.resume && s.session_info.resume.from_step >= seen.lastCheckpoint!.step);
    assert.equal(s.session_info.resume.first_step, s.session_info.resume.from_step + 1);
    assert.match(s.artifacts.last_checkpoint?.path ?? '', /step-300\.json$/);
    b.kill('SIGTERM');
    await b.exited;
  });

  test('cancel: the Python process saves a checkpoint and exits within the grace period', async (t) => {
    const w = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('logreg-py', { params: { epochs: 50, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 100 } });
    await waitFor(async () => (await h.query(progressQuery)).step >= 12, 30_000, 'step 12');
    const pid = pythonTrainerOf(env, h.workflowId)!;
    const before = (await h.query(progressQuery)).lastCheckpoint;
    const t0 = Date.now();
    await h.signal('cancel', { reason: 'test' });
    await waitFor(() => !isAlive(pid), 10_000, 'python trainer exit');
    const exitMs = Date.now() - t0;
    t.diagnostic(`python trainer exited ${exitMs} ms after the cancel signal (grace 5 s)`);
    await assert.rejects(h.result());
    const d = await h.describe();
    assert.equal(d.status.name, 'CANCELLED');
    const s = (d.memo as { summary: JobSummary }).summary;
    // It saved on SIGTERM (no checkpoint was due before step 100), and Kiln reports it.
    assert.equal(before, null);
    assert.ok(s.artifacts.last_checkpoint && s.artifacts.last_checkpoint.step >= 12, `checkpoint on SIGTERM: ${JSON.stringify(s.artifacts.last_checkpoint)}`);
    assert.ok(fs.existsSync(summaryPath(s, s.artifacts.last_checkpoint.path)));
    // Saved and exited on its own: a SIGKILL at the end of the grace period would leave no checkpoint
    // announced after the SIGTERM, and the shim would not report a clean exit.
    assert.doesNotMatch(readTrainerLog(env, h.workflowId), /Traceback/);
    w.kill('SIGTERM');
    await w.exited;
  });
});
