/**
 * Long chaos run (`npm run chaos`): the Temporal dev server is SIGTERMed and started again on the same
 * port and SQLite file CHAOS_N times (default 10) under one running job. Workers and the client
 * reconnect on their own; the job must complete with the issue-7 invariants. Figures go to
 * <CHAOS_OUT>/server-restart.json.
 *
 * stopMs / startMs: SIGTERM → server exited, spawn → frontend answering. progressMs: server answering
 * again → the job's step (progress query) advanced past where it stood before the stop.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../../src/shared/messages';
import { chaosN, recordFigures } from '../helpers/chaos';
import { assertRecovered, watchJob } from '../helpers/faults';
import { defaultConfigYaml, jobDir, waitFor, type KilnTestEnv } from '../helpers/kiln';
import { lastVerifiedStep, ownedDevServer, sleep, startKilnEnvOn, type OwnedServer } from '../helpers/processes';

const N = chaosN();
const DOWN_MS = 1000;

describe(`chaos: Temporal dev server restarted ${N} times under a running job`, () => {
  let server: OwnedServer;
  let env: KilnTestEnv;
  let dir: string;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-chaos-srv-'));
    server = await ownedDevServer(dir);
    env = await startKilnEnvOn(server.address, defaultConfigYaml({ timeouts: `  heartbeat: 4s\n  stall: 60s\n  cancelGrace: 3s\n  maxAttempts: ${N + 10}` }));
    await env.startControlWorker();
    await env.startGpuWorker({ slots: 2 });
  });
  after(async () => {
    await env?.cleanup();
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test(`${N} server restarts: the job completes, every invariant holds`, async () => {
    const epochs = N * 12;
    const h = await env.submit('spirals', { params: { epochs, steps_per_epoch: 20, step_delay_ms: 40, checkpoint_every: 5 } });
    const wd = jobDir(env, h.workflowId);
    const watch = watchJob(env, h.workflowId);
    const firstVerified = await waitFor(() => {
      const step = lastVerifiedStep(wd);
      return step >= 10 ? step : null;
    }, 30_000, 'a first checkpoint');
    const rows: Array<Record<string, number>> = [];
    for (let run = 1; run <= N; run++) {
      const stepBefore = await waitFor(async () => (await h.query(progressQuery)).step, 60_000, 'a progress answer');
      const stopMs = await server.stop();
      await sleep(DOWN_MS);
      const startMs = await server.start();
      const tUp = Date.now();
      const after = await waitFor(async () => {
        const p = await h.query(progressQuery);
        // queued: a retry waits for its slot after the restart; still in progress.
        return !inProgress(p.phase) || p.step > stepBefore ? p : null;
      }, 120_000, 'progress after the restart', 100);
      const row = { run, stepBefore, stopMs, startMs, progressMs: Date.now() - tUp, attempt: after.attempt };
      rows.push(row);
      console.log(`  restart ${run}/${N}: ${JSON.stringify(row)}`);
      if (!inProgress(after.phase)) break;
      await sleep(1500);
    }
    const r = await assertRecovered(env, h, watch, {
      training: 'either',
      lastVerifiedBefore: firstVerified,
      stepAtFault: null,
      checkpointEvery: 5,
      totalSteps: epochs * 20,
      retention: 3,
      graceMs: 3000,
    });
    assert.ok(rows.length >= Math.min(N, 3), `restarted ${rows.length} times`);
    const file = recordFigures('server-restart', rows);
    console.log(`  attempts ${r.summary.session_info.attempts}; figures: ${file}`);
  });
});

function inProgress(phase: string): boolean {
  return phase === 'training' || phase === 'queued';
}
