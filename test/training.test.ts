/**
 * TrainingJob end to end on a real dev server with real trainer processes: happy path, cancel (signal
 * through the real `temporal` CLI, and native cancel), pause/resume, stall, exit 2, garbage events,
 * retention and GPU leasing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import { progressQuery, reportSignal } from '../src/shared/messages';
import { summaryPath, type JobSummary } from '../src/shared/summary';
import { checkpointFiles, defaultConfigYaml, jobDir, readTrainerLog, startKilnEnv, temporalBinary, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';

const run = promisify(execFile);

async function phaseOf(env: KilnTestEnv, jobId: string): Promise<string | undefined> {
  const d = await env.client.workflow.getHandle(jobId).describe();
  return d.typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnPhase')?.value as string | undefined;
}

async function summaryOf(env: KilnTestEnv, jobId: string): Promise<JobSummary> {
  const d = await env.client.workflow.getHandle(jobId).describe();
  return (d.memo as { summary: JobSummary }).summary;
}

describe('TrainingJob', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ pools: `    gpu: { devices: auto, slots: 2, metricsPort: 0 }\n    fake: { devices: auto, slots: 1, metricsPort: 0 }` }));
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
  });
  after(async () => {
    await env?.cleanup();
  });

  test('happy path: completes with a full summary, phases in search attributes, version registered', async () => {
    const h = await env.submit('spirals', { params: { epochs: 2, steps_per_epoch: 15, step_delay_ms: 30 } });
    const seen = new Set<string>();
    const poll = setInterval(() => {
      phaseOf(env, h.workflowId).then((p) => p && seen.add(p), () => undefined);
    }, 100);
    const s = (await h.result()) as JobSummary;
    clearInterval(poll);
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 30);
    assert.equal(s.training_metrics.epochs, 2);
    assert.ok(typeof s.training_metrics.final_loss === 'number' && s.training_metrics.final_loss < 0.7, `final loss ${s.training_metrics.final_loss}`);
    assert.ok(s.training_metrics.duration_ms > 0);
    assert.ok(typeof s.validation_metrics.val_loss === 'number', 'val_loss present');
    assert.ok(typeof s.validation_metrics.accuracy === 'number' && s.validation_metrics.accuracy > 0.5, `accuracy ${s.validation_metrics.accuracy}`);
    assert.equal(s.artifacts.root, jobDir(env, h.workflowId), 'summary paths are relative to the job folder');
    assert.equal(s.artifacts.model_path, 'artifacts/model.json');
    assert.ok(s.artifacts.model_path && fs.existsSync(summaryPath(s, s.artifacts.model_path)), 'model artifact on disk');
    assert.ok(s.artifacts.last_checkpoint && fs.existsSync(summaryPath(s, s.artifacts.last_checkpoint.path)));
    assert.equal(s.artifacts.last_checkpoint.step, 30);
    assert.deepEqual(s.resource_usage.gpu_ids, []);
    assert.equal(s.resource_usage.gpu, null, 'no nvidia-smi: telemetry is null');
    assert.equal(s.session_info.attempts, 1);
    assert.equal(s.session_info.workers.length, 1);
    assert.equal(s.registry.version, 1);
    assert.equal(s.registry.stage, 'production');
    assert.match(s.registry.decision ?? '', /promoted/);
    assert.equal(await phaseOf(env, h.workflowId), 'completed');
    assert.ok(seen.has('training'), `phases seen: ${[...seen].join(',')}`);
    const d = await h.describe();
    const model = d.typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnModel')?.value;
    assert.equal(model, 'spirals');
    const trigger = d.typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnTrigger')?.value;
    assert.equal(trigger, 'manual');
    assert.match(h.workflowId, /^train-spirals-[0-9a-z]{6}$/);
    // Visibility answers the filter the UI and `kiln list` use.
    await waitFor(async () => {
      const ids: string[] = [];
      for await (const w of env.client.workflow.list({ query: `KilnModel = "spirals" AND KilnPhase = "completed"` })) ids.push(w.workflowId);
      return ids.includes(h.workflowId);
    }, 10_000, 'visibility to show the completed job');
  });

  async function startLongJob(): Promise<{ jobId: string; trainerPid: number }> {
    const h = await env.submit('spirals', { params: { epochs: 50, steps_per_epoch: 20, step_delay_ms: 50, checkpoint_every: 5 } });
    await waitFor(async () => (await h.query(progressQuery)).lastCheckpoint !== null, 20_000, 'a first checkpoint');
    const pid = await waitFor(() => trainerPids(env.home).find((p) => fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`KILN_JOB_ID=${h.workflowId}`)), 5000, 'trainer pid');
    return { jobId: h.workflowId, trainerPid: pid };
  }

  test('cancel signal through the real temporal CLI: trainer gone, run Canceled, reason recorded', async () => {
    const { jobId, trainerPid } = await startLongJob();
    await run(temporalBinary(), ['workflow', 'signal', '--address', env.address, '--workflow-id', jobId, '--name', 'cancel', '--input', '{"reason":"wrong lr"}']);
    const h = env.client.workflow.getHandle(jobId);
    await assert.rejects(h.result(), (err: unknown) => err instanceof WorkflowFailedError);
    assert.equal((await h.describe()).status.name, 'CANCELLED');
    assert.throws(() => process.kill(trainerPid, 0), 'trainer process is gone');
    assert.equal(await phaseOf(env, jobId), 'cancelled');
    const s = await summaryOf(env, jobId);
    assert.equal(s.outcome, 'cancelled');
    assert.equal(s.session_info.cancellation_reason, 'wrong lr');
    assert.ok(s.artifacts.last_checkpoint && fs.existsSync(summaryPath(s, s.artifacts.last_checkpoint.path)), 'last good checkpoint kept and reported');
    assert.match(readTrainerLog(env, jobId), /SIGTERM/i);
  });

  test('native cancel (temporal workflow cancel) behaves the same', async () => {
    const { jobId, trainerPid } = await startLongJob();
    await run(temporalBinary(), ['workflow', 'cancel', '--address', env.address, '--workflow-id', jobId]);
    const h = env.client.workflow.getHandle(jobId);
    await assert.rejects(h.result());
    assert.equal((await h.describe()).status.name, 'CANCELLED');
    assert.throws(() => process.kill(trainerPid, 0), 'trainer process is gone');
    assert.equal(await phaseOf(env, jobId), 'cancelled');
    const s = await summaryOf(env, jobId);
    assert.equal(s.outcome, 'cancelled');
    assert.match(s.session_info.cancellation_reason ?? '', /cancel/);
    assert.ok(s.artifacts.last_checkpoint);
  });

  test('pause then resume continues from the pause checkpoint, not step 0; at the end it is no longer pinned', async () => {
    const h = await env.submit('spirals', { params: { epochs: 10, steps_per_epoch: 20, step_delay_ms: 40, checkpoint_every: 5 }, retention: { keepLatest: 2, keepBest: 1 } });
    await waitFor(async () => (await h.query(progressQuery)).step >= 12, 20_000, 'step 12');
    await run(temporalBinary(), ['workflow', 'signal', '--address', env.address, '--workflow-id', h.workflowId, '--name', 'pause']);
    const paused = await waitFor(async () => {
      const p = await h.query(progressQuery);
      return p.phase === 'paused' ? p : null;
    }, 20_000, 'paused phase');
    assert.equal(trainerPids(env.home).filter((pid) => fs.readFileSync(`/proc/${pid}/environ`, 'utf8').includes(h.workflowId)).length, 0, 'no trainer while paused');
    const pauseStep = paused.lastCheckpoint!.step;
    assert.ok(pauseStep >= 12, `paused at checkpoint step ${pauseStep}`);
    assert.equal(await phaseOf(env, h.workflowId), 'paused');
    await new Promise((r) => setTimeout(r, 500));
    await run(temporalBinary(), ['workflow', 'signal', '--address', env.address, '--workflow-id', h.workflowId, '--name', 'resume']);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 200);
    assert.deepEqual(s.session_info.resume, { from_step: pauseStep, first_step: pauseStep + 1 });
    assert.match(readTrainerLog(env, h.workflowId), new RegExp(`resuming from step ${pauseStep}`));
    // Retention after the job: latest 2 + best 1 (by loss) + registered, the pause checkpoint no longer pinned.
    const manifest = JSON.parse(fs.readFileSync(path.join(jobDir(env, h.workflowId), 'checkpoints.json'), 'utf8')) as { checkpoints: Array<{ step: number; metrics: { loss?: number } }> };
    const kept = manifest.checkpoints.map((c) => c.step).sort((x, y) => x - y);
    assert.ok(kept.length <= 3, `kept ${kept.join(', ')} (at most 2 latest + 1 best)`);
    assert.equal(checkpointFiles(env, h.workflowId).length, kept.length, 'on disk = the manifest');
    assert.ok(kept.includes(200) && kept.includes(195), `the 2 latest kept: ${kept.join(', ')}`);
    const best = manifest.checkpoints.reduce((b, c) => ((c.metrics.loss ?? Infinity) < (b.metrics.loss ?? Infinity) ? c : b));
    if (pauseStep !== best.step) assert.ok(!kept.includes(pauseStep), `the pause checkpoint (step ${pauseStep}) was dropped: ${kept.join(', ')}`);
  });

  test('a trainer that hangs is killed as TrainerStalled and the retry completes', async () => {
    const h = await env.submit('spirals', {
      params: { epochs: 1, steps_per_epoch: 20, step_delay_ms: 20, checkpoint_every: 5, fault: 'hang', fault_at_step: 8, fault_attempts: [1] },
      timeouts: { stall: '2s' },
    });
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.session_info.attempts, 2);
    assert.ok((s.session_info.resume?.from_step ?? 0) >= 5, 'resumed from a checkpoint at or after the last one before the hang');
    assert.equal(s.session_info.resume?.first_step, s.session_info.resume!.from_step + 1);
    // One train activity per attempt: the first failed as TrainerStalled, the workflow started the next.
    const hist = await h.fetchHistory();
    const failed = hist.events?.filter((e) => e.activityTaskFailedEventAttributes) ?? [];
    assert.deepEqual(failed.map((e) => e.activityTaskFailedEventAttributes?.failure?.cause?.applicationFailureInfo?.type ?? e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type), ['TrainerStalled'], 'attempt 1 failed with TrainerStalled, and only it');
    assert.deepEqual(s.session_info.attempt_log?.map((a) => a.outcome), ['failed', 'completed']);
    assert.match(s.session_info.attempt_log?.[0]?.cause ?? '', /made no progress for 2000 ms/);
  });

  test('a trainer exiting 2 fails the job without retries, with the log tail', async () => {
    const h = await env.submit('spirals', { params: { fault: 'exit2', fault_at_step: 3, step_delay_ms: 10 } });
    const err = await h.result().then(
      () => assert.fail('expected failure'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError);
    assert.equal((await h.describe()).status.name, 'FAILED');
    const s = await summaryOf(env, h.workflowId);
    assert.equal(s.outcome, 'failed');
    assert.equal(s.session_info.attempts, 1);
    assert.match(s.session_info.failure ?? '', /exit 2/);
    assert.match(s.session_info.failure ?? '', /fault/i, 'log tail included');
    assert.equal(await phaseOf(env, h.workflowId), 'failed');
  });

  test('garbage on fd 3 is counted and ignored; the job completes', async () => {
    const h = await env.submit('spirals', { params: { fault: 'garbage', fault_at_step: 3, step_delay_ms: 20 } });
    let malformed = 0;
    const poll = setInterval(() => {
      h.query(progressQuery).then((p) => (malformed = Math.max(malformed, p.malformedEvents)), () => undefined);
    }, 100);
    const s = (await h.result()) as JobSummary;
    clearInterval(poll);
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 20);
    assert.ok(malformed > 50, `malformed events counted: ${malformed}`);
  });

  test('retention: never more than keepLatest + keepBest (+ pinned) checkpoints on disk', async () => {
    const h = await env.submit('spirals', { params: { epochs: 2, steps_per_epoch: 20, step_delay_ms: 25, checkpoint_every: 2 }, retention: { keepLatest: 2, keepBest: 1 } });
    let maxSeen = 0;
    let maxKept = 0;
    let observations = 0;
    const manifestFile = path.join(jobDir(env, h.workflowId), 'checkpoints.json');
    const poll = setInterval(() => {
      maxSeen = Math.max(maxSeen, checkpointFiles(env, h.workflowId).length);
      try {
        maxKept = Math.max(maxKept, (JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as { checkpoints: unknown[] }).checkpoints.length);
      } catch {
        /* not written yet */
      }
      observations += 1;
    }, 20);
    const s = (await h.result()) as JobSummary;
    clearInterval(poll);
    assert.equal(s.outcome, 'completed');
    assert.ok(observations > 20, `observed ${observations} times`);
    assert.ok(maxKept <= 3, `Kiln kept ${maxKept} checkpoints at once`);
    // On disk there may be one more for a moment: the checkpoint the trainer has just written and is
    // announcing; retention can only act once it is announced.
    assert.ok(maxSeen <= 3 + 1, `saw ${maxSeen} checkpoints on disk at once`);
    assert.ok(maxSeen >= 2, 'retention kept several checkpoints');
    const manifest = JSON.parse(fs.readFileSync(path.join(jobDir(env, h.workflowId), 'checkpoints.json'), 'utf8')) as { checkpoints: Array<{ step: number }> };
    assert.ok(manifest.checkpoints.some((c) => c.step === 40), 'latest checkpoint kept');
    assert.ok(manifest.checkpoints.length <= 3);
  });

  test('GPU leasing: two jobs on a 2-GPU worker get different CUDA_VISIBLE_DEVICES; a third waits', async () => {
    await env.startGpuWorker({ pool: 'fake', slots: undefined, fakeGpus: 2 });
    const jobs = await Promise.all([0, 1, 2].map(() => env.submit('spirals', { pool: 'fake', params: { epochs: 1, steps_per_epoch: 30, step_delay_ms: 60 } })));
    // Two running at once, the third queued behind them.
    const running = await waitFor(async () => {
      const ps = await Promise.all(jobs.map((j) => j.query(progressQuery)));
      const r = ps.filter((p) => p.phase === 'training' && p.step > 0);
      return r.length === 2 ? ps : null;
    }, 20_000, 'two jobs training');
    const waiting = running.find((p) => !(p.phase === 'training' && p.step > 0))!;
    assert.ok(waiting, 'the third job waits');
    const gpuSets = running.filter((p) => p.step > 0).map((p) => p.gpuIds.join(','));
    assert.equal(new Set(gpuSets).size, 2, `distinct GPU ids: ${gpuSets.join(' | ')}`);
    for (const g of gpuSets) assert.match(g, /^[01]$/);
    const results = (await Promise.all(jobs.map((j) => j.result()))) as JobSummary[];
    for (const r of results) {
      assert.equal(r.outcome, 'completed');
      assert.equal(r.resource_usage.gpu_ids.length, 1);
      assert.ok(r.resource_usage.gpu && r.resource_usage.gpu[0]!.name?.startsWith('Fake GPU'), 'telemetry from nvidia-smi');
    }
    for (const j of jobs) assert.match(readTrainerLog(env, j.workflowId), /CUDA_VISIBLE_DEVICES=[01]\b/);
  });

  test('a late progress report from an older attempt does not move progress back', async () => {
    const h = await env.submit('spirals', { params: { epochs: 1, steps_per_epoch: 40, step_delay_ms: 50 } });
    await waitFor(async () => (await h.query(progressQuery)).step >= 5, 20_000, 'step 5');
    const before = await h.query(progressQuery);
    await h.signal(reportSignal, { attempt: 0, step: 0, workerId: 'ghost', metrics: {}, checkpoints: [], validation: {}, gpuIds: [], gpu: null } as never);
    const afterQ = await h.query(progressQuery);
    assert.ok(afterQ.step >= before.step);
    assert.notEqual(afterQ.workerId, 'ghost');
    await h.result();
  });
});
