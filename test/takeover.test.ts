/**
 * Takeover, for real: a frozen GPU worker (SIGSTOP) stops pinging its shim, which stops the trainer
 * within the heartbeat timeout + grace (the dead-man's switch); a SIGKILLed worker's shim SIGTERMs the
 * trainer, which checkpoints and announces to the shim (journal), and a worker restarted on the same
 * host fails the dead attempt through its task token at once: the retry starts in seconds, not at the
 * heartbeat timeout, and resumes from that checkpoint (no step lost).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { defaultConfigYaml, readTrainerLog, startKilnEnv, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';
import { sleep } from './helpers/processes';

const MODELS = `  spirals:\n    trainer: example\n    dataset: synthetic://spirals/v1\n    params: { epochs: 2, steps_per_epoch: 10 }`;

function trainersOf(env: KilnTestEnv, jobId: string): number[] {
  return trainerPids(env.home).filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`KILN_JOB_ID=${jobId}\0`);
    } catch {
      return false;
    }
  });
}

describe('takeover', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        models: MODELS,
        timeouts: `  heartbeat: 3s\n  stall: 60s\n  cancelGrace: 2s\n  maxAttempts: 5`,
      }),
    );
    await env.startControlWorker();
  });
  after(async () => {
    await env?.cleanup();
  });

  test('SIGSTOP of the GPU worker: its trainer is gone within heartbeat timeout + grace; never two live trainers longer than that', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('spirals', { params: { epochs: 30, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 } });
    await waitFor(async () => ((await h.query(progressQuery)).lastCheckpoint?.step ?? 0) >= 10, 30_000, 'a checkpoint at step >= 10');
    const [trainer] = trainersOf(env, h.workflowId);
    assert.ok(trainer, 'a trainer under worker A');
    const b = await env.startGpuWorker({ slots: 1 });
    const t0 = Date.now();
    a.kill('SIGSTOP');
    let goneAfter: number | null = null;
    let twoSince: number | null = null;
    let longestTwo = 0;
    try {
      // Sample /proc every 50 ms until B's trainer runs and A's is gone.
      while (Date.now() - t0 < 30_000) {
        const live = trainersOf(env, h.workflowId);
        const now = Date.now();
        if (goneAfter === null && !live.includes(trainer)) goneAfter = now - t0;
        if (live.length > 1) twoSince ??= now;
        else if (twoSince !== null) {
          longestTwo = Math.max(longestTwo, now - twoSince);
          twoSince = null;
        }
        if (goneAfter !== null && live.length === 1) break;
        await sleep(50);
      }
    } finally {
      a.kill('SIGCONT');
      a.kill('SIGKILL');
    }
    console.log(`# trainer of the frozen worker gone ${goneAfter} ms after SIGSTOP (heartbeat 3000 + grace 2000); two live trainers for at most ${longestTwo} ms`);
    assert.ok(goneAfter !== null && goneAfter <= 3000 + 2000 + 1000, `trainer stopped ${goneAfter} ms after SIGSTOP`);
    assert.ok(longestTwo <= 5000, `two live trainers for ${longestTwo} ms`);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 300);
    b.kill('SIGTERM');
    await b.exited;
  });

  test('worker SIGKILL, worker restarted on the same host: the dead attempt is failed by task token, the retry starts in seconds and loses no step', async () => {
    const a = await env.startGpuWorker({ slots: 1 });
    // Heartbeat timeout 30 s: a retry within seconds cannot come from it.
    const h = await env.submit('spirals', { params: { epochs: 30, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 25 }, timeouts: { heartbeat: '30s' } });
    const seen = await waitFor(async () => {
      const p = await h.query(progressQuery);
      return (p.lastCheckpoint?.step ?? 0) >= 25 && p.step >= 30 ? p : null;
    }, 30_000, 'a checkpoint and more steps');
    a.kill('SIGKILL');
    await a.exited;
    const t0 = Date.now();
    const b = await env.startGpuWorker({ slots: 1 });
    const header = await waitFor(() => /=== kiln: attempt 2 on \S+ at (\S+), resuming from step (\d+)/.exec(readTrainerLog(env, h.workflowId)), 20_000, 'attempt 2 to start');
    const takeoverMs = Date.parse(header[1]!) - t0;
    const resumed = Number(header[2]);
    console.log(`# attempt 2 started ${takeoverMs} ms after the worker restart (heartbeat timeout 30 s); resumed from step ${resumed}, last step seen before the kill ${seen.step}, last checkpoint the dead worker handled ${seen.lastCheckpoint?.step}`);
    assert.ok(takeoverMs < 10_000, `takeover took ${takeoverMs} ms`);
    assert.ok(resumed >= seen.step, `resumed from ${resumed}: the SIGTERM checkpoint announced to the shim (step >= ${seen.step}) was adopted`);
    assert.match(fs.readFileSync(b.logFile, 'utf8'), /failed the attempt of a dead worker/);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 300);
    assert.equal(s.session_info.resume!.first_step, resumed + 1);
    b.kill('SIGTERM');
    await b.exited;
  });
});
