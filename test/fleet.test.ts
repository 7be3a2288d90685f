/**
 * Work survives the fleet: two GPU "hosts" that share no disk (each GPU worker in its own mount
 * namespace, `unshare -m`, with a private tmpfs mounted at the same state path), a control worker
 * (this process, the control host) and one Temporal dev server; checkpoints in a real S3-API server
 * (moto over HTTP on 127.0.0.1, one per file) reached directly or through a proxy the test can stall.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { progressQuery } from '../src/shared/messages';
import type { JobProgress, JobSummary } from '../src/shared/summary';
import { StorageSchema } from '../src/config/schema';
import { completedCheckpoints, S3Store, verifyCheckpoint } from '../src/storage';
import type { S3StorageConfig } from '../src/storage';
import { isAlive } from '../src/supervisor/proc';
import { WorkDirLease } from '../src/supervisor/workdir';
import { StoreFence } from '../activities/train/fence';
import { createLogger } from '../src/logger';
import { EXAMPLE_TRAINER_PARAMS } from './helpers/fixtures';
import { defaultConfigYaml, EXAMPLE_TRAINER, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';
import { createBucket, hostProcesses, hostsSkipReason, hostWrap, s3StorageYaml } from './helpers/hosts';
import { startMoto, type MotoServer } from './helpers/moto';
import { runKiln } from './helpers/processes';
import { StallProxy } from './helpers/fleet';

const BUCKET = 'kiln-fleet';
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const skip = hostsSkipReason();

const TRAINERS = `  plain:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
  plain-eval:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
    evaluate:
      # Reads the model at KILN_MODEL_PATH; runs on the control worker (this process), which cannot see a GPU host's disk.
      command: [node, ${EXAMPLE_TRAINER}]
      queue: control`;
const MODELS = `  spirals:
    trainer: plain
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
  spirals-eval:
    trainer: plain-eval
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }`;

function configYaml(state: string, storage: string): string {
  return defaultConfigYaml({
    trainers: TRAINERS,
    models: MODELS,
    pools: '    gpu: { devices: auto, slots: 1, metricsPort: 0 }',
    timeouts: '  heartbeat: 3s\n  stall: 30s\n  cancelGrace: 3s\n  maxAttempts: 5',
    extra: `artifacts:\n  root: ${path.join(state, 'artifacts')}\n${storage}`,
  });
}

const s3Yaml = (endpoint: string) => s3StorageYaml(BUCKET, 'fleet', endpoint);

describe('fleet: GPU hosts without a shared disk', { skip }, () => {
  let env: KilnTestEnv;
  let moto: MotoServer;
  let proxy: StallProxy;
  let state: string;
  let direct: string;
  const hosts: GpuWorkerProc[] = [];

  /** A GPU host: its own mount namespace with a private tmpfs at the state path. */
  async function startHost(config = env.configFile): Promise<GpuWorkerProc> {
    const w = await env.startGpuWorker({
      slots: 1,
      wrap: hostWrap(state),
      env: { ...moto.env, KILN_HOME: state, KILN_CONFIG: config },
    });
    hosts.push(w);
    return w;
  }

  async function stopHosts(): Promise<void> {
    for (const h of hosts) h.kill('SIGKILL');
    await Promise.all(hosts.map((h) => h.exited));
    await waitFor(() => hostProcesses(state).length === 0, 15_000, 'every trainer of the hosts to exit');
    for (const h of hosts) assert.ok(!isAlive(h.pid), `worker ${h.pid} is gone`);
    hosts.length = 0;
  }

  before(async () => {
    moto = await startMoto();
    await createBucket(moto, BUCKET);
    proxy = new StallProxy(Number(new URL(moto.endpoint).port));
    await proxy.listen();
    env = await startKilnEnv(defaultConfigYaml());
    // The control worker runs in this process and reaches the same bucket (moto's test credentials).
    for (const [k, v] of Object.entries(moto.env)) process.env[k] ??= v;
    state = path.join(env.home, 'state');
    fs.mkdirSync(state);
    // Hosts reach storage through the proxy; `direct` is the same bucket without it.
    env.writeConfig(configYaml(state, s3Yaml(`http://127.0.0.1:${proxy.port}`)));
    direct = path.join(env.home, 'direct.yaml');
    fs.writeFileSync(direct, configYaml(state, s3Yaml(moto.endpoint)));
    await env.startControlWorker();
  });
  after(async () => {
    await stopHosts().catch(() => undefined);
    await env?.cleanup();
    await proxy?.close();
    await moto?.stop();
    if (moto) assert.ok(!isAlive(moto.pid), 'moto is gone');
  });

  const verifiedCheckpoints = async (h: WorkflowHandle, n: number, minStep: number) =>
    waitFor(async () => {
      const p = (await h.query(progressQuery)) as JobProgress;
      return p.lastCheckpoint?.uri && p.checkpoints >= n && p.lastCheckpoint.step >= minStep ? p : null;
    }, 60_000, `${n} verified checkpoints`);

  test('s3: SIGKILL of the owning host after two verified checkpoints → the other host resumes from the last one and completes; stored checkpoints stay within retention', async () => {
    const a = await startHost();
    const h = await env.submit('spirals', { params: { epochs: 50, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 10 } });
    // Retention (keepLatest 2 + keepBest 1) holds for the stored checkpoints at every observation.
    const store = new S3Store(StorageSchema.parse({ kind: 's3', bucket: BUCKET, prefix: 'fleet', endpoint: moto.endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing' }) as S3StorageConfig);
    let maxStored = 0;
    let observations = 0;
    let observing = true;
    const observer = (async () => {
      while (observing) {
        maxStored = Math.max(maxStored, (await completedCheckpoints(store, `jobs/${h.workflowId}/checkpoints`)).length);
        observations += 1;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    // Host B starts once A trains the job, and the job is long (500 steps, 20 s): B's start and the
    // uploads take seconds on a busy machine, and A must not finish before it is killed.
    await trainingOn(h);
    const b = await startHost();
    const seen = await verifiedCheckpoints(h, 2, 20);
    assert.match(seen.lastCheckpoint!.uri!, new RegExp(`^s3://${BUCKET}/fleet/jobs/${h.workflowId}/checkpoints/`));
    a.kill('SIGKILL');
    await a.exited;
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 500);
    const resume = s.session_info.resume!;
    assert.ok(resume, 'the final attempt resumed');
    assert.ok(resume.from_step >= seen.lastCheckpoint!.step, `resumed from ${resume.from_step}; verified before the kill: ${seen.lastCheckpoint!.step}`);
    assert.equal(resume.first_step, resume.from_step + 1, 'first step = checkpoint step + 1');
    assert.ok(s.session_info.workers.some((w) => w.includes(`:${b.pid}:`)), `host B finished it: ${s.session_info.workers.join(', ')}`);
    assert.equal(s.session_info.restarted_from_scratch, undefined);
    observing = false;
    await observer;
    assert.ok(observations > 20, `observed ${observations} times`);
    assert.ok(maxStored <= 3, `at most ${maxStored} completed checkpoints stored at once; retention allows 3`);
    assert.equal((await completedCheckpoints(store, `jobs/${h.workflowId}/checkpoints`)).length, s.artifacts.checkpoints.length, 'what is stored is what the job kept');
    // What it resumed from was a verified checkpoint in storage, not a file on host A's disk.
    try {
      for (const c of s.artifacts.checkpoints) {
        assert.ok(c.uri, `checkpoint ${c.step} has a storage URI`);
        assert.equal((await verifyCheckpoint(store, c.uri.slice(store.uri.length + 1))).verified, true, `${c.uri} verifies`);
      }
    } finally {
      store.close();
    }
    await stopHosts();
  });

  test('s3: evaluation on the control host finds the model through storage; the version records its s3:// URI; kiln logs on the control side reads the uploaded trainer log', async () => {
    await startHost();
    const h = await env.submit('spirals-eval', { params: { epochs: 2, steps_per_epoch: 10, checkpoint_every: 10 } });
    const jobDir = path.join(state, 'artifacts', 'jobs', h.workflowId);
    // This process (the control host) sees the state path's own disk, not the GPU host's tmpfs.
    assert.equal(fs.existsSync(jobDir), false, 'the control host has no copy of the job folder before evaluation');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    const modelUri = `s3://${BUCKET}/fleet/jobs/${h.workflowId}/artifacts/model.json`;
    // The evaluate command read the downloaded model: its metrics are in the summary, and the model is on this disk now.
    assert.equal(typeof s.validation_metrics.val_loss, 'number', JSON.stringify(s.validation_metrics));
    const local = path.join(jobDir, 'artifacts', 'model.json');
    assert.ok(fs.existsSync(local), `the model was downloaded to ${local} on the control host`);
    assert.match(fs.readFileSync(path.join(jobDir, 'evaluate.log'), 'utf8'), new RegExp(`evaluate ${esc(local)}: val_loss`));
    assert.equal(fs.existsSync(path.join(jobDir, 'trainer.log')), false, 'no trainer.log on the control host');
    const store = new S3Store(StorageSchema.parse({ kind: 's3', bucket: BUCKET, prefix: 'fleet', endpoint: moto.endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing' }) as S3StorageConfig);
    try {
      const v = await verifyCheckpoint(store, modelUri.slice(store.uri.length + 1));
      assert.ok(v.verified, `the stored model verifies: ${JSON.stringify(v)}`);
      assert.equal(v.manifest.files[0]!.size, fs.statSync(local).size);
      assert.ok((await store.list(`jobs/${h.workflowId}/logs/evaluate/`)).length >= 1, 'evaluate.log was uploaded');
    } finally {
      store.close();
    }
    assert.ok(s.registry.version, 'a version was registered');
    const show = await runKiln(env, ['models', 'show', 'spirals-eval', String(s.registry.version)], { env: moto.env });
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, new RegExp(`artifact: +${esc(modelUri)} \\(in object storage\\)`));
    const logs = await runKiln(env, ['logs', h.workflowId], { env: moto.env });
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stderr, new RegExp(`reading the uploaded log from s3://${BUCKET}/fleet/jobs/${h.workflowId}/logs/trainer/`));
    assert.match(logs.stdout, /=== kiln: attempt 1 on \S+ at /);
    assert.match(logs.stdout, /done: 20 steps/);
    await stopHosts();
  });

  test('s3: a host killed while a checkpoint uploads → that checkpoint is never resumed from', async () => {
    const a = await startHost();
    const h = await env.submit('spirals', { params: { epochs: 40, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 10 } });
    const seen = await verifiedCheckpoints(h, 2, 20);
    // Host A's uploads now make no progress: the next checkpoint is announced but never completes.
    proxy.held = true;
    const stuck = await waitFor(async () => {
      const p = (await h.query(progressQuery)) as JobProgress;
      const m = /checkpoint step (\d+) uploading/.exec(p.line);
      return m ? { step: Number(m[1]), p } : null;
    }, 30_000, 'an upload in progress (shown in the status line)');
    const verifiedBefore = ((await h.query(progressQuery)) as JobProgress).lastCheckpoint!;
    assert.ok(stuck.step > verifiedBefore.step, `stuck upload of step ${stuck.step} is newer than the verified ${verifiedBefore.step}`);
    assert.ok(verifiedBefore.step >= seen.lastCheckpoint!.step);
    // Host B reaches storage directly.
    const b = await startHost(direct);
    a.kill('SIGKILL');
    await a.exited;
    const s = (await h.result()) as JobSummary;
    proxy.held = false;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, 400);
    const resume = s.session_info.resume!;
    assert.equal(resume.from_step, verifiedBefore.step, `resumed from the last verified checkpoint (${verifiedBefore.step}), not the half-uploaded ${stuck.step}`);
    assert.equal(resume.first_step, resume.from_step + 1);
    assert.ok(s.session_info.workers.some((w) => w.includes(`:${b.pid}:`)));
    await stopHosts();
  });

  test('local storage on two hosts: SIGKILL → CheckpointsUnreachable naming the checkpoints; onLostCheckpoints: restart → from step 0, and status says work was lost', async () => {
    env.writeConfig(configYaml(state, ''));
    try {
      const a = await startHost();
      const h = await env.submit('spirals', { params: { epochs: 50, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 10 } });
      await trainingOn(h);
      await startHost();
      const seen = await verifiedCheckpoints2(h);
      a.kill('SIGKILL');
      await a.exited;
      const err = await h.result().then(
        () => assert.fail('the job completed'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof WorkflowFailedError, String(err));
      // The attempt failed non-retryably as CheckpointsUnreachable (the job then fails with its message).
      const failed = (await h.fetchHistory()).events!.filter((e) => e.activityTaskFailedEventAttributes).map((e) => e.activityTaskFailedEventAttributes!.failure!);
      const last = failed[failed.length - 1]!;
      assert.equal(last.applicationFailureInfo?.type, 'CheckpointsUnreachable', last.message ?? '');
      assert.equal(last.applicationFailureInfo?.nonRetryable, true);
      const cause = err.cause as Error;
      const named = new RegExp(`every recorded checkpoint of ${h.workflowId} is unreachable from this host: step (\\d+) at (\\S+?),? .*\\(storage.kind: local, on the host of worker \\S+:${a.pid}:gpu-gpu\\)`).exec(cause.message);
      assert.ok(named, cause.message);
      assert.ok(Number(named[1]) >= seen, `names the newest checkpoint (step ${named[1]}; ${seen} was recorded before the kill)`);
      assert.equal(named[2], path.join(state, 'artifacts', 'jobs', h.workflowId, 'checkpoints', `step-${named[1]}.ckpt.json`));
      assert.match(cause.message, /set storage.kind: s3/);
      assert.match(cause.message, /onLostCheckpoints: restart/);
      assert.equal(failed.length, 1, 'failed once, not retried in a loop');
      const st1 = await runKiln(env, ['status', h.workflowId]);
      assert.match(st1.stdout, /failure: +.*every recorded checkpoint .* is unreachable from this host/);
      await stopHosts();

      const a2 = await startHost();
      const h2 = await env.submit('spirals', { params: { epochs: 50, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 10 }, onLostCheckpoints: 'restart' });
      await trainingOn(h2);
      await startHost();
      const seen2 = await verifiedCheckpoints2(h2);
      a2.kill('SIGKILL');
      await a2.exited;
      const s = (await h2.result()) as JobSummary;
      assert.equal(s.outcome, 'completed');
      assert.equal(s.training_metrics.steps, 500);
      const lost = s.session_info.restarted_from_scratch!;
      assert.ok(lost, 'the summary says it restarted from scratch');
      assert.ok(lost.steps_lost >= seen2, `steps lost ${lost.steps_lost} ≥ the checkpoint step ${seen2}`);
      assert.equal(s.session_info.resume, null, 'the final attempt started from step 0');
      const st = await runKiln(env, ['status', h2.workflowId]);
      assert.equal(st.code, 0, st.stderr);
      assert.match(st.stdout, new RegExp(`lost work: {2}attempt 2 restarted from step 0, ${lost.steps_lost} steps lost: every recorded checkpoint of ${h2.workflowId} is unreachable`));
      await stopHosts();
    } finally {
      env.writeConfig(configYaml(state, s3Yaml(`http://127.0.0.1:${proxy.port}`)));
    }
  });

  test('bad storage: a GPU worker refuses to start, naming the store and the fix (missing bucket, unreachable endpoint); no secret in its log', async () => {
    const bad = (name: string, storage: string) => {
      const f = path.join(env.home, `${name}.yaml`);
      fs.writeFileSync(f, configYaml(state, storage));
      return f;
    };
    const secret = 'SeCrEt-fleet-never-printed-42';
    const startWith = async (config: string) =>
      env.startGpuWorker({ slots: 1, env: { KILN_HOME: state, KILN_CONFIG: config, AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: secret } }).then(
        () => assert.fail('the worker started'),
        (e: unknown) => String(e),
      );
    const missing = await startWith(bad('nobucket', s3Yaml(moto.endpoint).replace(BUCKET, 'no-such-bucket')));
    assert.match(missing, /storage s3:\/\/no-such-bucket\/fleet .*cannot be used by this GPU worker/);
    assert.match(missing, /bucket/i);
    assert.ok(!missing.includes(secret), 'the secret is not in the log');
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
    const port = (dead.address() as net.AddressInfo).port;
    await new Promise<void>((r) => dead.close(() => r()));
    const unreachable = await startWith(bad('noendpoint', s3Yaml(`http://127.0.0.1:${port}`)));
    assert.match(unreachable, /storage s3:\/\/kiln-fleet\/fleet .*cannot be used by this GPU worker/);
    assert.ok(!unreachable.includes(secret), 'the secret is not in the log');
    console.log(`  missing bucket: ${missing.split('\n').find((l) => l.includes('cannot be used'))?.slice(0, 400)}`);
    console.log(`  unreachable: ${unreachable.split('\n').find((l) => l.includes('cannot be used'))?.slice(0, 400)}`);
  });

  test('the lease object fences across hosts: of two attempts racing, exactly one owns the job; a newer one supersedes it; an older one starts nothing', async () => {
    const cfg = StorageSchema.parse({ kind: 's3', bucket: BUCKET, prefix: 'fence', endpoint: moto.endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing' }) as S3StorageConfig;
    const store = new S3Store(cfg);
    const log = createLogger({ name: 'fence-test', level: 'error', pretty: false });
    try {
      const claim = (generation: number, holder: string) => ({ generation, attempt: 1, workerId: `host-${holder}`, holder });
      const race = await Promise.all(['x', 'y', 'z'].map((h) => StoreFence.take(store, 'job-race', claim(100, h), log)));
      const owners = race.filter((r) => 'fence' in r);
      assert.equal(owners.length, 1, `exactly one of three racing attempts owns the lease: ${JSON.stringify(race.map((r) => ('fence' in r ? 'owner' : r.owner.holder)))}`);
      const winner = (owners[0] as { fence: StoreFence }).fence;
      for (const r of race) if ('owner' in r) assert.equal(r.owner.holder, winner.lease.record.holder);
      // The winner's work dir lease (on its own host) follows the lease object.
      const dir = fs.mkdtempSync(path.join(env.home, 'wd-'));
      const local = WorkDirLease.take(dir, { gen: 100, attempt: 1, workerId: 'host-winner' });
      local.remote = () => winner.superseded;
      assert.equal(local.superseded(), false);
      const newer = await StoreFence.take(store, 'job-race', claim(200, 'n'), log);
      assert.ok('fence' in newer, 'a newer generation takes the lease over');
      assert.equal(await winner.poll(), true);
      assert.equal(local.superseded(), true, 'the older attempt on the other host counts as superseded');
      const older = await StoreFence.take(store, 'job-race', claim(150, 'o'), log);
      assert.ok('owner' in older && older.owner.holder === 'n', 'an older attempt does not take the lease back');
    } finally {
      store.close();
    }
  });

  /** The job's first attempt trains (on the only host up): a second host started now gets no part of it until the first dies. */
  const trainingOn = (h: WorkflowHandle) => waitFor(async () => ((await h.query(progressQuery)) as JobProgress).step > 0, 60_000, 'the job to train on the first host');

  /** local storage: the newest checkpoint step once one ≥ 20 is recorded. */
  async function verifiedCheckpoints2(h: WorkflowHandle): Promise<number> {
    const p = await waitFor(async () => {
      const q = (await h.query(progressQuery)) as JobProgress;
      return q.lastCheckpoint && q.lastCheckpoint.step >= 20 ? q : null;
    }, 60_000, 'a checkpoint at step >= 20');
    return p.lastCheckpoint!.step;
  }
});
