/**
 * Long chaos runs (`npm run chaos`, CHAOS_N repetitions, default 10): GPU workers SIGKILLed and
 * SIGTERMed under running jobs, over and over, each run held to the issue-7 invariants. Recovery
 * figures go to <CHAOS_OUT>/{sigkill,sigterm,consecutive}.json (default .kiln/chaos/).
 *
 * recoveryMs: the fault → the next attempt's trainer started (the worker's own timestamp in the
 * trainer.log header, same host clock). completedMs: the fault → the job's result. lostSteps: where
 * the interrupted trainer stopped (its own log line on SIGTERM) minus the step the next attempt
 * resumed from; that includes the step it finished after the signal.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { JobSummary } from '../../src/shared/summary';
import { attemptHeaders, chaosN, recordFigures } from '../helpers/chaos';
import { assertRecovered, stoppedAtStep, watchJob } from '../helpers/faults';
import { defaultConfigYaml, jobDir, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from '../helpers/kiln';
import { jobProcesses, lastVerifiedStep, workerOfTrainer } from '../helpers/processes';

const N = chaosN();
const EVERY = 5;
const GRACE_MS = 3000;
const PARAMS = { epochs: 3, steps_per_epoch: 20, step_delay_ms: 40, checkpoint_every: EVERY };
const TOTAL = 60;

describe(`chaos: GPU worker faults, ${N} times each`, () => {
  let env: KilnTestEnv;
  let workers: GpuWorkerProc[] = [];

  /** Keeps two live GPU workers (a supervisor would restart the dead one). */
  async function topUp(): Promise<void> {
    workers = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
    while (workers.length < 2) workers.push(await env.startGpuWorker({ slots: 1 }));
  }

  async function owner(jobId: string): Promise<{ trainer: number; worker: GpuWorkerProc }> {
    return waitFor(() => {
      const t = jobProcesses(env.home, jobId).find((p) => p.mode === 'train');
      const w = t && workers.find((x) => x.pid === workerOfTrainer(t.pid));
      return t && w ? { trainer: t.pid, worker: w } : null;
    }, 30_000, `the trainer of ${jobId} under one of our workers`);
  }

  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({ timeouts: `  heartbeat: 4s\n  stall: 30s\n  cancelGrace: ${GRACE_MS / 1000}s\n  maxAttempts: 40` }),
    );
    await env.startControlWorker();
  });
  after(async () => {
    await env?.cleanup();
  });

  for (const sig of ['SIGKILL', 'SIGTERM'] as const) {
    test(`${sig} the worker that owns a running job, ${N} jobs`, async () => {
      const rows: Array<Record<string, number | string | null>> = [];
      for (let run = 1; run <= N; run++) {
        await topUp();
        const h = await env.submit('spirals', { params: PARAMS });
        const dir = jobDir(env, h.workflowId);
        const watch = watchJob(env, h.workflowId);
        await waitFor(() => lastVerifiedStep(dir) >= 10, 30_000, 'a verified checkpoint at step >= 10');
        const { worker } = await owner(h.workflowId);
        const lastVerified = lastVerifiedStep(dir);
        const tFault = Date.now();
        worker.kill(sig);
        const r = await assertRecovered(env, h, watch, {
          training: 'retried',
          lastVerifiedBefore: lastVerified,
          stepAtFault: null,
          checkpointEvery: EVERY,
          totalSteps: TOTAL,
          retention: 3,
          graceMs: GRACE_MS,
        });
        const tDone = Date.now();
        await worker.exited;
        const next = attemptHeaders(env, h.workflowId).find((a) => a.attempt >= 2);
        const stopped = stoppedAtStep(env, h.workflowId);
        const row = {
          run,
          lastVerified,
          resumedFrom: r.resumedFrom,
          stoppedAt: stopped,
          lostSteps: stopped !== null && r.resumedFrom !== null ? stopped - r.resumedFrom : null,
          recoveryMs: next ? next.at - tFault : null,
          completedMs: tDone - tFault,
          attempts: r.summary.session_info.attempts,
        };
        rows.push(row);
        console.log(`  ${sig} run ${run}/${N}: ${JSON.stringify(row)}`);
      }
      const file = recordFigures(sig.toLowerCase(), rows);
      console.log(`  figures: ${file}`);
    });
  }

  test(`one job survives ${N} consecutive faults (alternating SIGKILL and SIGTERM of its owner)`, async () => {
    const rows: Array<Record<string, number | string | null>> = [];
    await topUp();
    const epochs = Math.max(6, N * 3);
    // The default timeouts.maxAttempts (5): interruptions never use it up (issue 16, item 1).
    const h = await env.submit('spirals', { params: { ...PARAMS, epochs } });
    const dir = jobDir(env, h.workflowId);
    const watch = watchJob(env, h.workflowId);
    const firstVerified = await waitFor(() => {
      const step = lastVerifiedStep(dir);
      return step >= 10 ? step : null;
    }, 30_000, 'a first checkpoint');
    for (let run = 1; run <= N; run++) {
      const sig = run % 2 ? 'SIGKILL' : 'SIGTERM';
      await topUp();
      const { worker } = await owner(h.workflowId);
      const before = attemptHeaders(env, h.workflowId).length;
      // Fault only once the current attempt has checkpointed, so every fault has something to resume.
      const verified = lastVerifiedStep(dir);
      await waitFor(() => lastVerifiedStep(dir) > verified, 30_000, 'the current attempt to checkpoint');
      const lastVerified = lastVerifiedStep(dir);
      const tFault = Date.now();
      worker.kill(sig);
      const next = await waitFor(() => attemptHeaders(env, h.workflowId).slice(before)[0], 60_000, 'the next attempt');
      rows.push({ run, signal: sig, lastVerified, resumedFrom: next.resumedFromStep, recoveryMs: next.at - tFault });
      assert.ok((next.resumedFromStep ?? 0) >= lastVerified, `run ${run}: resumed from ${next.resumedFromStep}, verified ${lastVerified}`);
      console.log(`  fault ${run}/${N}: ${JSON.stringify(rows[rows.length - 1])}`);
      await worker.exited;
    }
    const r = await assertRecovered(env, h, watch, {
      training: 'retried',
      lastVerifiedBefore: firstVerified,
      stepAtFault: null,
      checkpointEvery: EVERY,
      totalSteps: epochs * 20,
      retention: 3,
      graceMs: GRACE_MS,
    });
    const s: JobSummary = r.summary;
    assert.ok(s.session_info.attempts >= N + 1, `attempts ${s.session_info.attempts}`);
    assert.equal(s.session_info.interruptions, N, `the summary lists the ${N} faults as interruptions`);
    const log = s.session_info.attempt_log ?? [];
    const interrupted = log.filter((a) => a.outcome === 'interrupted').length + (s.session_info.older_attempts?.by_outcome.interrupted ?? 0);
    assert.equal(interrupted, N, `the attempt log has ${N} interrupted attempts: ${JSON.stringify(log.map((a) => a.outcome))}`);
    const file = recordFigures('consecutive', rows);
    console.log(`  ${s.session_info.attempts} attempts; figures: ${file}`);
  });
});
