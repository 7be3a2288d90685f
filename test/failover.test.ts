/**
 * Worker death, for real: SIGKILL of a GPU worker process mid-training (the engine notices by heartbeat
 * timeout and a second worker resumes from the checkpoint), SIGTERM (the attempt moves at once), and
 * no trainer of the dead worker survives it.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { isAlive } from '../src/supervisor/proc';
import { EXAMPLE_TRAINER_PARAMS } from './helpers/fixtures';
import { defaultConfigYaml, EXAMPLE_TRAINER, readTrainerLog, startKilnEnv, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';

function trainerOf(env: KilnTestEnv, jobId: string): number | undefined {
  return trainerPids(env.home).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`KILN_JOB_ID=${jobId}\0`);
    } catch {
      return false;
    }
  });
}

describe('GPU worker failover', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        // A trainer that ignores the stdin-EOF guard (most real ones do): only the reaper can stop it.
        trainers: `  deaf:\n    command: [sh, -c, 'exec node ${EXAMPLE_TRAINER} </dev/null']\n    params:${EXAMPLE_TRAINER_PARAMS}`,
        models: `  spirals:\n    trainer: example\n    dataset: synthetic://spirals/v1\n    params: { epochs: 2, steps_per_epoch: 10 }\n  deaf:\n    trainer: deaf\n    dataset: synthetic://spirals/v1\n    params: { epochs: 2, steps_per_epoch: 10 }`,
        timeouts: `  heartbeat: 30s\n  stall: 60s\n  cancelGrace: 3s\n  maxAttempts: 5`,
      }),
    );
    await env.startControlWorker();
  });
  after(async () => {
    await env?.cleanup();
  });

  test('SIGKILL mid-training: another worker resumes from the checkpoint (checkpoint step + 1); no orphan trainer', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    // A short heartbeat timeout for this job, so the engine notices the dead worker quickly.
    const h = await env.submit('spirals', { params: { epochs: 25, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 }, timeouts: { heartbeat: '3s' } });
    const beforeKill = await waitFor(async () => {
      const p = await h.query(progressQuery);
      return p.lastCheckpoint && p.lastCheckpoint.step >= 10 ? p : null;
    }, 30_000, 'a checkpoint at step >= 10');
    const oldTrainer = trainerOf(env, h.workflowId);
    assert.ok(oldTrainer, 'trainer running under worker A');
    const b = await env.startGpuWorker({ slots: 1 });
    a.kill('SIGKILL');
    await a.exited;
    // The shim sees its pipe close and takes the trainer down (SIGTERM, then SIGKILL after the grace).
    await waitFor(() => !isAlive(oldTrainer), 10_000, 'the dead worker’s trainer to exit');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 250);
    assert.ok(s.session_info.attempts >= 2, `attempts ${s.session_info.attempts}`);
    const resume = s.session_info.resume;
    assert.ok(resume, 'the final attempt resumed');
    assert.ok(resume.from_step >= beforeKill.lastCheckpoint!.step, `resumed from ${resume.from_step}, last checkpoint seen before the kill ${beforeKill.lastCheckpoint!.step}`);
    assert.equal(resume.first_step, resume.from_step + 1, 'first step after resume = checkpoint step + 1');
    assert.ok(s.session_info.workers.some((w) => w.includes(`:${b.pid}:`)), `worker B finished it: ${s.session_info.workers.join(', ')}`);
    assert.ok(!isAlive(oldTrainer), 'no trainer process from the dead worker remains');
    assert.equal(trainerPids(env.home).length, 0, 'no trainer left at all');
    b.kill('SIGTERM');
    await b.exited;
  });

  test('SIGTERM: the attempt moves to another worker at once, without waiting for the heartbeat timeout', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    // heartbeat timeout 30 s: a resume well before that proves the move did not wait for it.
    const h = await env.submit('spirals', { params: { epochs: 25, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 } });
    await waitFor(async () => ((await h.query(progressQuery)).lastCheckpoint?.step ?? 0) >= 10, 30_000, 'a checkpoint at step >= 10');
    const oldTrainer = trainerOf(env, h.workflowId)!;
    const b = await env.startGpuWorker({ slots: 1 });
    const t0 = Date.now();
    a.kill('SIGTERM');
    const moved = await waitFor(async () => {
      const p = await h.query(progressQuery);
      return p.attempt >= 2 && p.workerId?.includes(`:${b.pid}:`) && p.step > 0 ? p : null;
    }, 25_000, 'the job to resume on worker B');
    const movedAfter = Date.now() - t0;
    assert.ok(movedAfter < 25_000, `moved after ${movedAfter} ms (heartbeat timeout is 30 s)`);
    await a.exited;
    assert.ok(!isAlive(oldTrainer), 'the old trainer exited');
    // On SIGTERM the trainer checkpointed: the new attempt starts from that checkpoint.
    assert.match(readTrainerLog(env, h.workflowId), /resuming from step \d+/);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 250);
    assert.equal(s.session_info.resume!.first_step, s.session_info.resume!.from_step + 1);
    assert.ok(moved.step > 0);
    b.kill('SIGTERM');
    await b.exited;
  });

  test('a worker starting up kills a trainer orphaned by a crashed worker on this host', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('deaf', { params: { epochs: 25, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 }, timeouts: { heartbeat: '3s' } });
    await waitFor(async () => ((await h.query(progressQuery)).lastCheckpoint?.step ?? 0) >= 5, 30_000, 'a checkpoint');
    const trainer = trainerOf(env, h.workflowId)!;
    const pidfiles = fs.readdirSync(`${env.home}/run`).flatMap((host) => fs.readdirSync(`${env.home}/run/${host}`));
    assert.ok(pidfiles.some((f) => f.startsWith(h.workflowId)), 'pid file recorded for the running trainer');
    // Kill worker AND shim, as an OOM killer or `kill -9` of the whole group would: the trainer (own
    // process group) is orphaned, which is seed 004's failure.
    const shim = JSON.parse(fs.readFileSync(`${env.home}/run/${pidfiles.length ? fs.readdirSync(`${env.home}/run`)[0] : ''}/${h.workflowId}.json`, 'utf8')).shimPid as number;
    process.kill(shim, 'SIGKILL');
    a.kill('SIGKILL');
    await a.exited;
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(isAlive(trainer), 'the trainer survived its worker and shim (orphaned)');
    const b = await env.startGpuWorker({ slots: 1 });
    await waitFor(() => !isAlive(trainer), 10_000, 'the new worker to reap the orphan');
    assert.match(fs.readFileSync(b.logFile, 'utf8'), /orphaned trainer/);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    b.kill('SIGTERM');
    await b.exited;
  });
});
