/**
 * Fault injection against running jobs (issue 7), on the real dev server with real worker and trainer
 * processes. Basic worker SIGKILL/SIGTERM mid-training lives in failover.test.ts; this file covers
 * the other moments and faults. Every test ends with assertRecovered (helpers/faults.ts): completed,
 * resume ≥ last verified checkpoint and at most one checkpoint interval lost, no orphan process,
 * checkpoints within retention, exactly one registry version.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { pidfileFor, readPidfile } from '../src/supervisor/pidfiles';
import { isAlive } from '../src/supervisor/proc';
import { submitJob } from '../src/client/jobs';
import { buildSpec } from '../src/config/spec';
import { assertRecovered, stoppedAtStep, watchJob, type RecoveryExpectation } from './helpers/faults';
import { EXAMPLE_TRAINER_PARAMS, PROMOTED_SPIRALS_MODEL } from './helpers/fixtures';
import { defaultConfigYaml, EXAMPLE_TRAINER, jobDir, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';
import {
  FIXTURES,
  jobProcesses,
  killAllStarted,
  lastVerifiedStep,
  ownedDevServer,
  registryVersionsForJob,
  sleep,
  spawnKiln,
  startControlWorkerProcess,
  startKilnEnvOn,
  workerOfTrainer,
  type OwnedServer,
} from './helpers/processes';

const GRACE_MS = 3000;
const EVERY = 5;
/** 80 steps of ~40 ms, a checkpoint every 5 steps: long enough to land faults, short enough to rerun. */
const PARAMS = { epochs: 4, steps_per_epoch: 20, step_delay_ms: 40, checkpoint_every: EVERY };
const TOTAL = 80;
// keepLatest 2 + keepBest 1 (the config defaults).
const RETENTION = 3;

const expect = (o: Partial<RecoveryExpectation> & Pick<RecoveryExpectation, 'training'>): RecoveryExpectation => ({
  lastVerifiedBefore: null,
  stepAtFault: null,
  checkpointEvery: EVERY,
  totalSteps: TOTAL,
  retention: RETENTION,
  graceMs: GRACE_MS,
  ...o,
});

function reliabilityConfig(): string {
  return defaultConfigYaml({
    trainers: `  example-gpu-eval:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
    evaluate:
      # Held open for 2 s, so the worker kill lands while the evaluate command runs, even on a busy machine.
      command: [sh, -c, 'sleep 2; exec node ${EXAMPLE_TRAINER}']
      queue: gpu
  flood:
    command: [node, ${path.join(FIXTURES, 'flood-trainer.mjs')}]
    env: { FLOOD_MB: "20" }
    params:${EXAMPLE_TRAINER_PARAMS}
    evaluate:
      command: [node, ${EXAMPLE_TRAINER}]
      queue: control`,
    models: `${PROMOTED_SPIRALS_MODEL}
  spirals-gpu-eval:
    trainer: example-gpu-eval
    dataset: synthetic://spirals/v1
    requiredMetrics: [val_loss, accuracy]
  flooded:
    trainer: flood
    dataset: synthetic://spirals/v1
    requiredMetrics: [val_loss, accuracy]`,
    timeouts: `  heartbeat: 4s
  stall: 20s
  cancelGrace: ${GRACE_MS / 1000}s
  maxAttempts: 6`,
  });
}

function trainerOf(env: KilnTestEnv, jobId: string): number | undefined {
  return jobProcesses(env.home, jobId).find((p) => p.mode === 'train')?.pid;
}

// Registration recovery waits out registerVersion's start-to-close timeout (30 s, no heartbeat
// timeout), so that suite runs beside the others instead of after them.
describe('reliability', { concurrency: true }, () => {
  describe('control worker killed during registration', { concurrency: 1 }, () => {
    let env: KilnTestEnv;
    before(async () => {
      env = await startKilnEnv(reliabilityConfig());
      await env.startGpuWorker({ slots: 2 });
    });
    after(async () => {
      await killAllStarted(env);
      await env?.cleanup();
    });

    test('SIGKILL the control worker during registration (after the registry write): one version, job completes', async () => {
      const queue = `kiln-control-reg-${Date.now()}`;
      const marker = path.join(env.home, 'register-held.json');
      const first = await startControlWorkerProcess(env, { taskQueue: queue, holdRegisterFile: marker });
      const spec = buildSpec(env.config, 'spirals', { params: PARAMS });
      const h = await submitJob(env.client, env.config, spec, { taskQueue: queue });
      const watch = watchJob(env, h.workflowId);
      const held = await waitFor(() => (fs.existsSync(marker) ? (JSON.parse(fs.readFileSync(marker, 'utf8')) as { pid: number; version: number }) : null), 60_000, 'registerVersion to write the registry');
      assert.equal(await registryVersionsForJob(env.home, h.workflowId), 1, 'the version is stored before the kill');
      first.kill('SIGKILL');
      await first.exited;
      const t0 = Date.now();
      // A restarted control worker (systemd would do this) without the hook.
      const second = await startControlWorkerProcess(env, { taskQueue: queue });
      await assertRecovered(env, h, watch, expect({ training: 'untouched' }));
      const s = (await h.result()) as JobSummary;
      assert.equal(s.registry.version, held.version, 'the retry returned the version the killed attempt wrote');
      // registerVersion has no heartbeat timeout: the server retries it only after its start-to-close
      // timeout. Recorded here, not asserted.
      console.log(`  registration recovered ${((Date.now() - t0) / 1000).toFixed(1)} s after the control worker was killed`);
      second.kill('SIGTERM');
      await second.exited;
    });
  });

  describe('process faults', { concurrency: 1 }, () => {
    describe('GPU worker and trainer faults against a running job', () => {
      let env: KilnTestEnv;
      let workers: GpuWorkerProc[] = [];

      /** Two fresh single-slot GPU workers on one queue; workers of the previous test are stopped first. */
      async function twoGpuWorkers(): Promise<GpuWorkerProc[]> {
        for (const w of workers) w.kill('SIGKILL');
        await Promise.all(workers.map((w) => w.exited));
        workers = await Promise.all([env.startGpuWorker({ slots: 1 }), env.startGpuWorker({ slots: 1 })]);
        return workers;
      }

      before(async () => {
        env = await startKilnEnv(reliabilityConfig());
        await env.startControlWorker();
      });
      after(async () => {
        await killAllStarted(env);
        await env?.cleanup();
      });

      test('SIGKILL the GPU worker during a checkpoint write: resume from the previous verified checkpoint', async () => {
        await twoGpuWorkers();
        // Each checkpoint write holds its temp file 400 ms before the rename (a large checkpoint), so the
        // kill below lands inside a write even on a busy machine.
        const h = await env.submit('spirals', { params: { ...PARAMS, checkpoint_write_ms: 400 } });
        const dir = jobDir(env, h.workflowId);
        const watch = watchJob(env, h.workflowId);
        await waitFor(() => lastVerifiedStep(dir) >= 10, 30_000, 'a verified checkpoint at step >= 10');
        const trainer = trainerOf(env, h.workflowId)!;
        const worker = workerOfTrainer(trainer)!;
        assert.ok(workers.some((w) => w.pid === worker), 'the trainer runs under one of our workers');

        // Landing "during": the trainer writes <final>.tmp, fsyncs, renames, then announces. On the
        // temp file's inotify event we SIGSTOP the trainer and check the temp file is still there (no
        // rename yet); only then is the worker SIGKILLed, so its death provably falls inside the write.
        // If the rename won the race we let the trainer go and wait for the next checkpoint.
        const ckptDir = path.join(dir, 'checkpoints');
        const landed = await new Promise<{ step: number; lastVerified: number }>((resolve, reject) => {
          const timer = setTimeout(() => {
            watcher.close();
            reject(new Error('no checkpoint write caught in 30 s'));
          }, 30_000);
          const watcher = fs.watch(ckptDir, (_ev, name) => {
            const m = name && /^step-(\d+)\.ckpt\.json\.tmp$/.exec(name);
            if (!m) return;
            try {
              process.kill(trainer, 'SIGSTOP');
            } catch {
              return;
            }
            if (!fs.existsSync(path.join(ckptDir, name))) {
              process.kill(trainer, 'SIGCONT');
              return;
            }
            const lastVerified = lastVerifiedStep(dir);
            process.kill(worker, 'SIGKILL');
            watcher.close();
            clearTimeout(timer);
            resolve({ step: Number(m[1]), lastVerified });
          });
        });
        await waitFor(() => !isAlive(worker), 5000, 'the worker to die');
        process.kill(trainer, 'SIGCONT');
        console.log(`  killed the worker while the trainer was writing checkpoint step ${landed.step}; last verified: step ${landed.lastVerified}`);
        assert.ok(landed.lastVerified >= landed.step - EVERY, 'the previous checkpoint was verified');

        const r = await assertRecovered(env, h, watch, expect({ training: 'retried', lastVerifiedBefore: landed.lastVerified, stepAtFault: landed.step }));
        console.log(`  resumed from step ${r.resumedFrom}, lost ${r.lostSteps} steps; the dying trainer stopped at step ${stoppedAtStep(env, h.workflowId)}; max on disk ${watch.maxOnDisk} (any time ${watch.maxOnDiskAnyTime})`);
      });

      test('SIGKILL the GPU worker during evaluation (evaluate.queue: gpu): evaluation reruns, training does not', async () => {
        await twoGpuWorkers();
        const h = await env.submit('spirals-gpu-eval', { params: PARAMS });
        const watch = watchJob(env, h.workflowId);
        // The evaluate command's shim writes <jobId>.evaluate.json when it starts the command and removes
        // it when the command exits; the kill below lands while that record names a live process.
        const pidfile = pidfileFor(env.home, `${h.workflowId}.evaluate`);
        const rec = await waitFor(() => readPidfile(pidfile), 60_000, 'the evaluate command to start', 2);
        const evalAlive = isAlive(rec.trainerPid);
        process.kill(rec.workerPid, 'SIGKILL');
        console.log(`  killed worker ${rec.workerPid} with its evaluate command ${evalAlive ? 'running' : 'just finished'}`);
        assert.ok(workers.some((w) => w.pid === rec.workerPid));
        const r = await assertRecovered(env, h, watch, expect({ training: 'untouched' }));
        const hist = await h.fetchHistory();
        const evalStarts = (hist.events ?? []).filter((e) => e.activityTaskStartedEventAttributes && e.activityTaskStartedEventAttributes.attempt && e.activityTaskStartedEventAttributes.attempt > 1);
        assert.ok(evalStarts.length >= 1, 'a retried attempt (evaluate) appears in history');
        assert.ok(typeof r.summary.validation_metrics.val_loss === 'number');
      });

      test('trainer crash (exit 1) on the first attempt only: retried from the last checkpoint', async () => {
        await twoGpuWorkers();
        const h = await env.submit('spirals', { params: { ...PARAMS, fault: 'crash', fault_at_step: 23, fault_attempts: [1] } });
        const watch = watchJob(env, h.workflowId);
        const r = await assertRecovered(env, h, watch, expect({ training: 'retried', lastVerifiedBefore: 20, stepAtFault: 23 }));
        assert.equal(r.summary.session_info.attempts, 2);
      });

      test('trainer hang: killed as stalled, retried from the last checkpoint', async () => {
        await twoGpuWorkers();
        const h = await env.submit('spirals', { params: { ...PARAMS, fault: 'hang', fault_at_step: 13, fault_attempts: [1] }, timeouts: { stall: '2s' } });
        const watch = watchJob(env, h.workflowId);
        const r = await assertRecovered(env, h, watch, expect({ training: 'retried', lastVerifiedBefore: 10, stepAtFault: 13 }));
        assert.equal(r.summary.session_info.attempts, 2);
      });

      test('truncated checkpoint, then death: resume from the previous verified one, never the torn file', async () => {
        await twoGpuWorkers();
        // At step 13 the trainer writes half of step 15's checkpoint at its final name and exits 1.
        const h = await env.submit('spirals', { params: { ...PARAMS, fault: 'truncate', fault_at_step: 13, fault_attempts: [1] } });
        const watch = watchJob(env, h.workflowId);
        const r = await assertRecovered(env, h, watch, expect({ training: 'retried', lastVerifiedBefore: 10, stepAtFault: 13 }));
        assert.equal(r.resumedFrom, 10, 'resumed from step 10, not from the torn step-15 file');
        assert.equal(r.summary.session_info.attempts, 2, 'one retry: the torn file never made a resume fail');
      });

      test('fd 3 flooded with 20 MiB of garbage: counted and dropped, events still handled, no retry', async () => {
        await twoGpuWorkers();
        const h = await env.submit('flooded', { params: { ...PARAMS, step_delay_ms: 60 } });
        const watch = watchJob(env, h.workflowId);
        let malformed = 0;
        const poll = setInterval(() => {
          h.query(progressQuery).then((p) => (malformed = Math.max(malformed, p.malformedEvents)), () => undefined);
        }, 200);
        try {
          await assertRecovered(env, h, watch, expect({ training: 'untouched' }));
        } finally {
          clearInterval(poll);
        }
        console.log(`  malformed events counted: ${malformed}`);
        assert.ok(malformed > 1000, `malformed events counted: ${malformed}`);
      });

      test('two GPU workers on one queue, the owner repeatedly SIGSTOPped/SIGCONTed: never two live trainers', async () => {
        await twoGpuWorkers();
        const h = await env.submit('spirals', { params: { ...PARAMS, epochs: 12 } });
        const dir = jobDir(env, h.workflowId);
        const watch = watchJob(env, h.workflowId);
        let maxLive = 0;
        let samples = 0;
        const over: string[] = [];
        const sampler = setInterval(() => {
          const live = jobProcesses(env.home, h.workflowId).filter((p) => p.mode === 'train');
          samples += 1;
          maxLive = Math.max(maxLive, live.length);
          if (live.length > 1) over.push(live.map((p) => `pid ${p.pid} attempt ${p.attempt} state ${p.state}`).join(' + '));
        }, 50);
        await waitFor(() => lastVerifiedStep(dir) >= 10, 30_000, 'a first checkpoint');
        const firstVerified = lastVerifiedStep(dir);
        let freezes = 0;
        try {
          for (let i = 0; i < 3; i++) {
            const trainer = await waitFor(() => trainerOf(env, h.workflowId), 30_000, 'a live trainer');
            const owner = workerOfTrainer(trainer);
            if (!owner || !workers.some((w) => w.pid === owner)) continue;
            // Frozen past the heartbeat timeout (4 s), so the attempt times out and the other worker takes it.
            process.kill(owner, 'SIGSTOP');
            freezes += 1;
            await waitFor(() => jobProcesses(env.home, h.workflowId).some((p) => p.mode === 'train' && workerOfTrainer(p.pid) !== owner), 30_000, 'the other worker to take over').catch(() => undefined);
            await sleep(500);
            process.kill(owner, 'SIGCONT');
            await sleep(1500);
            if ((await h.describe()).status.name !== 'RUNNING') break;
          }
        } finally {
          for (const w of workers) {
            try {
              process.kill(w.pid, 'SIGCONT');
            } catch {
              /* gone */
            }
          }
        }
        await h.result().catch(() => undefined);
        clearInterval(sampler);
        console.log(`  ${freezes} freezes, ${samples} samples, max live trainers ${maxLive}; frozen trainers' files on disk: up to ${watch.maxOnDiskAnyTime}`);
        assert.ok(freezes >= 2, `froze the owning worker ${freezes} times`);
        assert.ok(samples > 100, `sampled ${samples} times`);
        assert.deepEqual(over, [], 'two trainers of the job were alive at once');
        assert.equal(maxLive, 1);
        const r = await assertRecovered(env, h, watch, expect({ training: 'retried', lastVerifiedBefore: firstVerified, totalSteps: 240 }));
        console.log(`  attempts ${r.summary.session_info.attempts}, resumed last from step ${r.resumedFrom}`);
      });

      test('the CLI that started the job is SIGKILLed right after printing the id: the job is unaffected', { skip: process.env.TEMPORAL_ADDRESS ? 'the CLI submits to kiln-control, which a shared server may serve elsewhere' : false }, async () => {
        await twoGpuWorkers();
        const control = await startControlWorkerProcess(env);
        let jobId: string | undefined;
        const cli = spawnKiln(env, ['submit', 'spirals', '--watch', '--param', 'epochs=4', '--param', 'steps_per_epoch=20', '--param', 'step_delay_ms=40', '--param', 'checkpoint_every=5'], (line) => {
          if (!jobId && /^train-spirals-/.test(line)) {
            jobId = line.trim();
            cli.kill('SIGKILL');
          }
        });
        const code = await cli.exited;
        assert.ok(jobId, `the CLI printed a job id (log: ${fs.existsSync(cli.logFile) ? fs.readFileSync(cli.logFile, 'utf8') : ''})`);
        assert.equal(code, null, 'the CLI died by the signal');
        const h = env.client.workflow.getHandle(jobId);
        const watch = watchJob(env, jobId);
        await assertRecovered(env, h, watch, expect({ training: 'untouched' }));
        control.kill('SIGTERM');
        await control.exited;
      });
    });

    describe('Temporal dev server restarted mid-job', () => {
      let server: OwnedServer;
      let env: KilnTestEnv;
      before(async () => {
        server = await ownedDevServer(fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-srv-')));
        env = await startKilnEnvOn(server.address, reliabilityConfig());
        await env.startControlWorker();
        await env.startGpuWorker({ slots: 2 });
      });
      after(async () => {
        await env?.cleanup();
        await server?.stop();
        fs.rmSync(path.dirname(server.dbFile), { recursive: true, force: true });
      });

      test('SIGTERM the server mid-training, start it again on the same port and SQLite file: the job completes', async () => {
        const h = await env.submit('spirals', { params: { ...PARAMS, epochs: 8 } });
        const dir = jobDir(env, h.workflowId);
        const watch = watchJob(env, h.workflowId);
        await waitFor(() => lastVerifiedStep(dir) >= 10, 30_000, 'a verified checkpoint');
        const lastVerified = lastVerifiedStep(dir);
        const stopMs = await server.stop();
        await sleep(2000);
        const startMs = await server.start();
        console.log(`  server stopped in ${stopMs} ms, down ~2 s, restarted in ${startMs} ms`);
        const r = await assertRecovered(env, h, watch, expect({ training: 'either', lastVerifiedBefore: lastVerified, totalSteps: 160 }));
        console.log(`  training attempts ${r.summary.session_info.attempts}, resumed from ${r.resumedFrom ?? '-'}`);
      });
    });
  });
});
