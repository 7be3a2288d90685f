/**
 * What a failed attempt costs (issue 16): the workflow runs one train activity per attempt and counts
 * two budgets itself. Real processes: the example trainer with injected crashes, and real SIGKILL /
 * SIGTERM of the GPU worker that owns the job.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import type { JobSummary } from '../src/shared/summary';
import { EXAMPLE_TRAINER_PARAMS } from './helpers/fixtures';
import { defaultConfigYaml, jobDir, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';
import { FIXTURES, jobProcesses, lastVerifiedStep, runKiln, workerOfTrainer } from './helpers/processes';
import { attemptEndLine } from '../src/cli/watch';

/** The train activities the job scheduled, from its history: one per attempt. */
async function trainActivities(h: WorkflowHandle): Promise<number> {
  const events = (await h.fetchHistory()).events ?? [];
  return events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train').length;
}

describe('attempt budgets: interruptions never use up a job; trainer failures count only without progress', () => {
  let env: KilnTestEnv;
  let workers: GpuWorkerProc[] = [];
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        trainers: `  progress-crash:
    command: [node, ${path.join(FIXTURES, 'progress-crash-trainer.mjs')}]
    env: { CRASH_AFTER: "12" }
    params:${EXAMPLE_TRAINER_PARAMS}`,
        models: `  spirals:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
  flaky:
    trainer: progress-crash
    dataset: synthetic://spirals/v1
    params: { epochs: 4, steps_per_epoch: 20, checkpoint_every: 5, step_delay_ms: 10 }`,
        timeouts: `  heartbeat: 4s\n  stall: 20s\n  cancelGrace: 5s\n  maxAttempts: 2`,
      }),
    );
    await env.startControlWorker();
  });
  after(async () => env?.cleanup());

  async function topUp(n: number): Promise<void> {
    workers = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
    while (workers.length < n) workers.push(await env.startGpuWorker({ slots: 1 }));
  }

  test('a trainer that crashes at once every time fails after maxAttempts, with its log tail, in exactly that many attempts', async () => {
    await topUp(1);
    const h = await env.submit('spirals', { params: { fault: 'crash', fault_at_step: 1, fault_attempts: [1, 2, 3, 4, 5, 6, 7, 8] }, timeouts: { maxAttempts: 3 } });
    await assert.rejects(h.result(), (e: unknown) => {
      const m = e instanceof WorkflowFailedError ? String(e.cause?.message) : '';
      return /trainer failed 3 times in a row without progress \(timeouts\.maxAttempts: 3\); last: trainer exited with code 1/.test(m) && /injected fault: crash after step 1/.test(m);
    });
    assert.equal(await trainActivities(h), 3);
    const s = (await h.describe()).memo?.summary as JobSummary;
    assert.deepEqual(s.session_info.attempt_log!.map((a) => a.outcome), ['failed', 'failed', 'failed']);
    assert.equal(s.session_info.interruptions, 0);
  });

  test('a trainer that crashes every attempt after making progress completes: each checkpoint resets the count', async () => {
    await topUp(1);
    const h = await env.submit('flaky');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    const log = s.session_info.attempt_log!;
    const failed = log.filter((a) => a.outcome === 'failed');
    assert.ok(failed.length >= 4, `crashed ${failed.length} times (maxAttempts is 2): ${JSON.stringify(log)}`);
    for (const a of failed) assert.match(a.cause ?? '', /trainer exited with code 1/);
    assert.equal(log.at(-1)!.outcome, 'completed');
    // Every attempt resumed past the one before: progress, not a loop.
    for (let i = 1; i < log.length; i++) assert.ok(log[i]!.resume_step > log[i - 1]!.resume_step, `attempt ${i + 1} resumed from ${log[i]!.resume_step}`);
    assert.equal(s.session_info.attempts, log.length);
    assert.equal(await trainActivities(h), log.length, 'the summary counts match the history');
  });

  test('alternating SIGKILL/SIGTERM of the owning worker, after new progress each time, with maxAttempts 1: completes, every interruption listed', async () => {
    const FAULTS = 4;
    await topUp(2);
    const h = await env.submit('spirals', { params: { epochs: 30, steps_per_epoch: 10, step_delay_ms: 30, checkpoint_every: 5 }, timeouts: { maxAttempts: 1 } });
    // kiln watch (plain lines) follows the job from the start and prints every attempt event.
    const watching = runKiln(env, ['watch', h.workflowId, '--interval', '300'], { timeoutMs: 600_000 });
    const dir = jobDir(env, h.workflowId);
    await waitFor(() => lastVerifiedStep(dir) >= 5, 60_000, 'a first checkpoint');
    for (let i = 1; i <= FAULTS; i++) {
      await topUp(2);
      const verified = lastVerifiedStep(dir);
      await waitFor(() => lastVerifiedStep(dir) > verified, 60_000, `fault ${i}: new progress first`);
      const owner = await waitFor(() => {
        const t = jobProcesses(env.home, h.workflowId).find((p) => p.mode === 'train');
        return t ? workers.find((w) => w.pid === workerOfTrainer(t.pid)) : undefined;
      }, 30_000, 'the owning worker');
      owner.kill(i % 2 ? 'SIGKILL' : 'SIGTERM');
      await owner.exited;
    }
    await topUp(2);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.session_info.interruptions, FAULTS);
    const interrupted = s.session_info.attempt_log!.filter((a) => a.outcome === 'interrupted');
    assert.equal(interrupted.length, FAULTS, JSON.stringify(s.session_info.attempt_log));
    assert.ok(interrupted.some((a) => /worker lost/.test(a.cause ?? '')), 'a SIGKILL shows as a lost worker');
    assert.equal(s.session_info.attempts, FAULTS + 1);
    assert.equal(await trainActivities(h), FAULTS + 1);

    // kiln watch printed each attempt's end, as the summary records it, once and in order: as many as
    // the train activities in the history, the interrupted ones with their worker, step and resume point.
    const w = await watching;
    assert.equal(w.code, 0, w.stderr);
    const ended = w.stdout.split('\n').filter((l) => l.startsWith(`${h.workflowId} attempt `) && !/: training from step \d+$/.test(l));
    assert.deepEqual(ended, s.session_info.attempt_log!.map((a) => `${h.workflowId} ${attemptEndLine(a)}`), w.stdout);
    assert.equal(ended.length, await trainActivities(h));
    const lost = interrupted.map((a) => ended[a.n - 1]!);
    assert.equal(lost.length, FAULTS, w.stdout);
    for (const l of lost) assert.match(l, new RegExp(`^${h.workflowId} attempt \\d+ on \\S+:gpu-gpu: .+ at step \\d+, (resumed from \\d+|from step 0)`));
  });
});
