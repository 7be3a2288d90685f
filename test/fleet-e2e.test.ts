/**
 * The whole fleet at once: two GPU hosts and a control host that share no disk (each GPU host a mount
 * namespace with a private tmpfs at the same state path; the control host is this process, on the
 * machine's own disk), checkpoints, models and logs in a real S3-API server (moto over HTTP), and the
 * registry in a real PostgreSQL 15 cluster every host's config points at. Also: a checkpoint whose
 * uploads are all refused is swept from the host's disk and the status line says so.
 */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { StorageSchema } from '../src/config/schema';
import { progressQuery } from '../src/shared/messages';
import type { JobProgress, JobSummary } from '../src/shared/summary';
import { S3Store, verifyCheckpoint, type S3StorageConfig } from '../src/storage';
import { isAlive } from '../src/supervisor/proc';
import { EXAMPLE_TRAINER_PARAMS } from './helpers/fixtures';
import { esc, startHost, StallProxy, type Host } from './helpers/fleet';
import { createBucket, hostProcesses, hostsSkipReason } from './helpers/hosts';
import { defaultConfigYaml, EXAMPLE_TRAINER, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';
import { startMoto, type MotoServer } from './helpers/moto';
import { noPostgres, startPostgres, type PgCluster } from './helpers/postgres';
import { runKiln } from './helpers/processes';

const BUCKET = 'kiln-e2e';
const skip = hostsSkipReason() || noPostgres();

const TRAINERS = `  plain:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
  plain-eval:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
    evaluate:
      # Runs on the control worker (this process), which cannot see a GPU host's disk.
      command: [node, ${EXAMPLE_TRAINER}]
      queue: control
  notes:
    # The example trainer, then more files in the artifacts folder than the model (a file and a folder).
    command: [sh, -c, 'node "$0" && printf "lr 0.3\\n" > "$KILN_ARTIFACT_DIR/notes.txt" && mkdir -p "$KILN_ARTIFACT_DIR/plots" && printf "step,loss\\n" > "$KILN_ARTIFACT_DIR/plots/loss.csv" && printf "acc\\n" > "$KILN_ARTIFACT_DIR/plots/acc.csv"', ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}`;
const MODELS = `  spirals:
    trainer: plain
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
  spirals-eval:
    trainer: plain-eval
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
  spirals-notes:
    trainer: notes
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }`;

function configYaml(state: string, endpoint: string, registry: string): string {
  return defaultConfigYaml({
    trainers: TRAINERS,
    models: MODELS,
    pools: '    gpu: { devices: auto, slots: 1, metricsPort: 0 }',
    timeouts: '  heartbeat: 3s\n  stall: 30s\n  cancelGrace: 3s\n  maxAttempts: 5',
    extra: `artifacts:\n  root: ${path.join(state, 'artifacts')}\nregistry:\n  url: "${registry}"\nstorage:\n  kind: s3\n  bucket: ${BUCKET}\n  prefix: e2e\n  endpoint: ${endpoint}\n  forcePathStyle: true\n`,
  });
}

describe('fleet end to end: two GPU hosts, a control host, S3 and PostgreSQL', { skip }, () => {
  let env: KilnTestEnv;
  let moto: MotoServer;
  let pg: PgCluster;
  let proxy: StallProxy;
  let state: string;
  let registryUrl: string;
  const hosts: Host[] = [];
  const workers: GpuWorkerProc[] = [];

  /** Each host has its own config file (same storage, same PostgreSQL); `viaProxy` reaches storage through the proxy. */
  function hostConfig(name: string, viaProxy = false): string {
    const f = path.join(env.home, `${name}.yaml`);
    fs.writeFileSync(f, configYaml(state, viaProxy ? `http://127.0.0.1:${proxy.port}` : moto.endpoint, registryUrl));
    return f;
  }
  const hostEnv = (config: string) => ({ ...moto.env, KILN_HOME: state, KILN_CONFIG: config, TEMPORAL_ADDRESS: env.address, KILN_LOG_PRETTY: '0' });

  async function newHost(name: string): Promise<Host> {
    const h = await startHost(name, state);
    hosts.push(h);
    return h;
  }
  async function startWorker(host: Host, config: string): Promise<GpuWorkerProc> {
    const w = await env.startGpuWorker({ slots: 1, wrap: host.wrap, env: hostEnv(config) });
    workers.push(w);
    return w;
  }
  async function stopAll(): Promise<void> {
    for (const w of workers) w.kill('SIGKILL');
    await Promise.all(workers.map((w) => w.exited));
    await waitFor(() => hostProcesses(state).length === 0, 15_000, 'every trainer of the hosts to exit');
    for (const w of workers) assert.ok(!isAlive(w.pid), `worker ${w.pid} is gone`);
    for (const h of hosts) await h.stop();
    for (const h of hosts) assert.ok(!isAlive(h.pid), `host ${h.name}'s holder ${h.pid} is gone`);
    workers.length = 0;
    hosts.length = 0;
  }

  before(async () => {
    moto = await startMoto();
    pg = await startPostgres();
    registryUrl = await pg.createDatabase('kiln_fleet');
    await createBucket(moto, BUCKET);
    proxy = new StallProxy(Number(new URL(moto.endpoint).port));
    await proxy.listen();
    env = await startKilnEnv(defaultConfigYaml());
    for (const [k, v] of Object.entries(moto.env)) process.env[k] ??= v;
    state = path.join(env.home, 'state');
    fs.mkdirSync(state);
    // The control host: this process, its own config (temporal.yaml), the state path on this machine's disk.
    env.writeConfig(configYaml(state, moto.endpoint, registryUrl));
    await env.startControlWorker();
  });
  after(async () => {
    await stopAll().catch(() => undefined);
    await env?.cleanup();
    await proxy?.close();
    await moto?.stop();
    if (moto) assert.ok(!isAlive(moto.pid), 'moto is gone');
    const pid = pg?.pid;
    await pg?.stop();
    if (pid) assert.ok(!isAlive(pid), 'the postmaster is gone');
  });

  // A failed test leaves no worker polling for the next one.
  afterEach(stopAll);

  const progress = async (h: WorkflowHandle) => (await h.query(progressQuery)) as JobProgress;

  test('SIGKILL of the owning GPU host after two verified checkpoints → the other host resumes from the last one and completes; evaluation on the control host; one version in PostgreSQL; models list on every host; kiln logs shows both attempts whole', async () => {
    const [cfgA, cfgB] = [hostConfig('host-a'), hostConfig('host-b')];
    const hostA = await newHost('a');
    const a1 = await startWorker(hostA, cfgA);
    const h = await env.submit('spirals-eval', { params: { epochs: 25, steps_per_epoch: 10, step_delay_ms: 100, checkpoint_every: 10 } });
    // Host B starts only once host A runs attempt 1 (one slot each: B cannot take it), and while it trains.
    await waitFor(async () => ((await progress(h)).workerId ?? '').includes(`:${a1.pid}:`), 60_000, 'attempt 1 on host A');
    const hostB = await newHost('b');
    const b = await startWorker(hostB, cfgB);
    const seen = await waitFor(async () => {
      const p = await progress(h);
      return p.lastCheckpoint?.uri && p.checkpoints >= 2 && p.lastCheckpoint.step >= 20 ? p : null;
    }, 60_000, 'two verified checkpoints');
    assert.ok(seen.step < 250, `killed mid-training (step ${seen.step})`);
    a1.kill('SIGKILL');
    await a1.exited;
    // Host A's worker comes back (as systemd would restart it) once host B runs attempt 2.
    await waitFor(async () => ((await progress(h)).workerId ?? '').includes(`:${b.pid}:`), 60_000, 'attempt 2 on host B');
    const a2 = await startWorker(hostA, cfgA);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed', JSON.stringify(s.session_info));
    assert.equal(s.training_metrics.steps, 250);
    const resume = s.session_info.resume!;
    assert.ok(resume, 'the final attempt resumed');
    assert.ok(resume.from_step >= seen.lastCheckpoint!.step, `resumed from ${resume.from_step}; verified before the kill: ${seen.lastCheckpoint!.step}`);
    assert.equal(resume.first_step, resume.from_step + 1, 'first step = checkpoint step + 1');
    assert.ok(s.session_info.workers.some((w) => w.includes(`:${b.pid}:`)), `host B finished it: ${s.session_info.workers.join(', ')}`);
    assert.equal(s.session_info.restarted_from_scratch, undefined);

    // Evaluation ran on the control host with the model it downloaded from storage.
    assert.equal(typeof s.validation_metrics.val_loss, 'number', JSON.stringify(s.validation_metrics));
    const jobDir = path.join(state, 'artifacts', 'jobs', h.workflowId);
    const model = path.join(jobDir, 'artifacts', 'model.json');
    assert.match(fs.readFileSync(path.join(jobDir, 'evaluate.log'), 'utf8'), new RegExp(`evaluate ${esc(model)}: val_loss`));
    assert.equal(fs.existsSync(path.join(jobDir, 'trainer.log')), false, 'the control host never had the trainer log');

    // Exactly one version, in PostgreSQL; every host's `kiln models list` (its own config) shows it.
    const rows = await pg.sql('kiln_fleet', 'SELECT model, version, job_id, artifact_path FROM model_versions');
    assert.deepEqual(rows, [{ model: 'spirals-eval', version: 1, job_id: h.workflowId, artifact_path: `s3://${BUCKET}/e2e/jobs/${h.workflowId}/artifacts/model.json` }]);
    const lists = [
      { where: 'control', r: await runKiln(env, ['models', 'list', '--json'], { env: moto.env }) },
      { where: 'host A', r: await hostA.kiln(['models', 'list', '--json'], hostEnv(cfgA)) },
      { where: 'host B', r: await hostB.kiln(['models', 'list', '--json'], hostEnv(cfgB)) },
    ];
    for (const { where, r } of lists) {
      assert.equal(r.code, 0, `${where}: ${r.stderr}`);
      const versions = JSON.parse(r.stdout) as Array<{ model: string; version: number; jobId: string }>;
      assert.deepEqual(versions.map((v) => [v.model, v.version, v.jobId]), [['spirals-eval', 1, h.workflowId]], `${where}: ${r.stdout}`);
    }
    for (const host of [hostA, hostB]) assert.equal(fs.existsSync(host.file(path.join(state, 'registry.sqlite'))), false, `host ${host.name} opened no SQLite registry`);

    // kiln logs on the control host: both attempts, attempt 1 whole (its last lines were written after the SIGKILL).
    await waitFor(() => fs.readFileSync(a2.logFile, 'utf8').includes("uploaded the rest of attempt 1's trainer.log"), 30_000, 'the restarted worker on host A to upload the rest of attempt 1');
    const localA = fs.readFileSync(hostA.file(path.join(jobDir, 'trainer.log')), 'utf8');
    // Written after the SIGKILL: the shim stopping the trainer, and the trainer's last words.
    assert.match(localA, /kiln shim: worker went away: SIGTERM to trainer/);
    assert.match(localA, /SIGTERM received: saving a checkpoint after step \d+/);
    const logs = await runKiln(env, ['logs', h.workflowId, '-n', '100000'], { env: moto.env });
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stderr, new RegExp(`reading the uploaded log from s3://${BUCKET}/e2e/jobs/${h.workflowId}/logs/trainer/`));
    const at2 = logs.stdout.indexOf('\n=== kiln: attempt 2 on ');
    assert.ok(at2 > 0, logs.stdout);
    assert.equal(logs.stdout.slice(0, at2), localA, "attempt 1's part in storage is host A's whole trainer.log");
    assert.match(logs.stdout, new RegExp(`=== kiln: attempt 1 on \\S+:${a1.pid}:gpu-gpu at `));
    assert.match(logs.stdout.slice(at2), new RegExp(`^\\n=== kiln: attempt 2 on \\S+:${b.pid}:gpu-gpu at \\S+, resuming from step ${resume.from_step} `));
    assert.match(logs.stdout.slice(at2), /done: 250 steps/);
  });

  test('every upload of a checkpoint refused (403) → not a resume point, its local copy deleted, and the status line and log say so', async () => {
    const cfg = hostConfig('host-c', true);
    const host = await newHost('c');
    const w = await startWorker(host, cfg);
    const h = await env.submit('spirals', { params: { epochs: 40, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 50 } });
    const ckptDir = path.join(state, 'artifacts', 'jobs', h.workflowId, 'checkpoints');
    proxy.refuse = new RegExp(`^PUT /${BUCKET}/e2e/jobs/${esc(h.workflowId)}/checkpoints/`);
    let line = '';
    try {
      const p = await waitFor(async () => {
        const q = await progress(h);
        return /not stored/.test(q.line) ? q : null;
      }, 60_000, 'a checkpoint given up (in the status line)');
      line = p.line;
      const m = /(\d+) checkpoints? not stored: step (\d+) after 3 failed uploads \((.*)\), not a resume point; local copy deleted/.exec(line);
      assert.ok(m, line);
      const step = Number(m[2]);
      assert.match(m[3]!, /access denied by the storage endpoint/);
      assert.ok(proxy.refused >= 3, `${proxy.refused} requests refused`);
      assert.equal(fs.existsSync(host.file(path.join(ckptDir, `step-${step}.ckpt.json`))), false, `step ${step} is gone from host C's disk`);
      assert.ok(!p.lastCheckpoint, `no checkpoint is verified: ${JSON.stringify(p.lastCheckpoint)}`);
      const st = await runKiln(env, ['status', h.workflowId], { env: moto.env });
      // By now a later checkpoint may have been given up too: the line names the last one.
      assert.match(st.stdout, /progress: .* checkpoints? not stored: step \d+ after 3 failed uploads \(.*access denied.*\), not a resume point; local copy deleted/);
      assert.match(fs.readFileSync(w.logFile, 'utf8'), new RegExp(`checkpoint step ${step} not stored after 3 upload tries: not a resume point; its local copy was deleted`));
    } finally {
      proxy.refuse = null;
    }
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.ok(s.artifacts.checkpoints.length > 0 && s.artifacts.checkpoints.every((c) => c.uri), 'checkpoints after the refusals were stored');
    // What is left on the host's disk is what the job kept: nothing given up lingers.
    const left = fs.readdirSync(host.file(ckptDir)).sort();
    assert.deepEqual(left, s.artifacts.checkpoints.map((c) => path.basename(c.path)).sort(), `left on host C: ${left.join(', ')}; ${line}`);
  });

  test('every file of the artifacts folder goes to storage with the model, checksummed; the registry records them and kiln models show prints them', async () => {
    const host = await newHost('d');
    await startWorker(host, hostConfig('host-d'));
    const h = await env.submit('spirals-notes');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    const dir = path.join(state, 'artifacts', 'jobs', h.workflowId, 'artifacts');
    const sha = (rel: string) => crypto.createHash('sha256').update(fs.readFileSync(host.file(path.join(dir, rel)))).digest('hex');
    const base = `s3://${BUCKET}/e2e/jobs/${h.workflowId}/artifacts`;
    const expected = [
      { name: 'model.json', uri: `${base}/model.json`, files: ['model.json'] },
      { name: 'notes.txt', uri: `${base}/notes.txt`, files: ['notes.txt'] },
      { name: 'plots', uri: `${base}/plots`, files: ['acc.csv', 'loss.csv'] },
    ];
    const [row] = await pg.sql('kiln_fleet', 'SELECT a.artifacts_json FROM version_artifacts a JOIN model_versions v ON v.id = a.version_id WHERE v.job_id = $1', [h.workflowId]);
    const recorded = JSON.parse(String(row!.artifacts_json)) as Array<{ name: string; uri: string; bytes: number; files: Array<{ path: string; size: number; sha256: string }> }>;
    assert.deepEqual(recorded.map((a) => [a.name, a.uri, a.files.map((f) => f.path)]), expected.map((e) => [e.name, e.uri, e.files]));
    const store = new S3Store(StorageSchema.parse({ kind: 's3', bucket: BUCKET, prefix: 'e2e', endpoint: moto.endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing' }) as S3StorageConfig);
    try {
      for (const a of recorded) {
        const v = await verifyCheckpoint(store, a.uri.slice(store.uri.length + 1));
        assert.ok(v.verified, `${a.uri} verifies in storage: ${JSON.stringify(v)}`);
        for (const f of a.files) {
          const rel = a.files.length === 1 && a.name === f.path ? f.path : `${a.name}/${f.path}`;
          assert.equal(f.sha256, sha(rel), `${rel}: the recorded sha256 is the file's on the GPU host`);
          assert.equal(f.size, fs.statSync(host.file(path.join(dir, rel))).size);
        }
      }
    } finally {
      store.close();
    }
    const show = await runKiln(env, ['models', 'show', 'spirals-notes', String(s.registry.version)], { env: moto.env });
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, new RegExp(`stored: +model\\.json  ${esc(base)}/model\\.json  \\(1 file, \\d+ bytes\\)`));
    assert.match(show.stdout, new RegExp(`notes\\.txt  ${esc(base)}/notes\\.txt  \\(1 file, 7 bytes\\)\\n +notes\\.txt  7 bytes  sha256 ${sha('notes.txt')}`));
    assert.match(show.stdout, new RegExp(`plots  ${esc(base)}/plots  \\(2 files, 14 bytes\\)\\n +acc\\.csv  4 bytes  sha256 ${sha('plots/acc.csv')}\\n +loss\\.csv  10 bytes  sha256 ${sha('plots/loss.csv')}`));
  });
});
