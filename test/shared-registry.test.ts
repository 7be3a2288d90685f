/**
 * The shared registry and `kiln doctor`'s storage and registry checks, against real parts: a
 * PostgreSQL 15 cluster started by this file, a moto S3 server, a Temporal dev server, the control
 * worker in-process and a GPU worker as a child process. A job registers into PostgreSQL through the
 * control worker, `kiln models list` (a separate process) shows it, and no host opens a SQLite file.
 * A bad registry URL, a wrong password or an unreachable server stop `kiln worker control` before
 * it polls, with the reason; doctor says the same with a fix. No password is ever printed.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { JobSummary } from '../src/shared/summary';
import type { JobSpec, PreparedJob } from '../src/shared/spec';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { CommonDeps } from '../activities/deps';
import { createPrepareJob } from '../activities/prepare';
import { buildSpec } from '../src/config/spec';
import { openRegistry } from '../src/registry/open';
import { PG_SCHEMA_VERSION } from '../src/registry/pgMigrations';
import { defaultConfigYaml, startKilnEnv, type KilnTestEnv } from './helpers/kiln';
import { motoCommand, startMoto, type MotoServer } from './helpers/moto';
import { noPostgres, startPostgres, type PgCluster } from './helpers/postgres';
import { runKiln } from './helpers/processes';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const pgSkip = noPostgres();
const noMoto = motoCommand() ? false : "moto_server not installed (pip install 'moto[server]')";

interface DoctorCheck {
  id: string;
  status: string;
  detail: string;
  hint?: string;
}

describe('shared registry on PostgreSQL, doctor storage and registry checks', { skip: pgSkip || noMoto }, () => {
  let pg: PgCluster;
  let moto: MotoServer;
  let env: KilnTestEnv;
  let url: string;
  const yamlWith = (registry: string, storage = '') => defaultConfigYaml({ extra: `registry:\n  url: "${registry}"\n${storage}` });
  const writeConfig = (name: string, yaml: string) => {
    const file = path.join(env.home, name);
    fs.writeFileSync(file, yaml);
    return file;
  };
  const noSecret = (text: string) => assert.ok(!text.includes(pg.password) && !text.includes('not-the-password'), `a password was printed:\n${text}`);

  before(async () => {
    pg = await startPostgres();
    moto = await startMoto();
    url = await pg.createDatabase('kiln_e2e');
    env = await startKilnEnv(yamlWith(url));
  });
  after(async () => {
    await env?.cleanup();
    await moto?.stop();
    const pid = pg?.pid;
    await pg?.stop();
    if (pid) assert.throws(() => process.kill(pid, 0), 'the postmaster is gone');
  });

  test('a job registers into PostgreSQL through the control worker; kiln models list shows it; no SQLite registry anywhere', async () => {
    await env.startControlWorker();
    const gpu = await env.startGpuWorker({ pool: 'gpu', slots: 1 });
    const h = await env.submit('spirals');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.deepEqual([s.registry.version, s.registry.stage], [1, 'production']);

    const rows = await pg.sql('kiln_e2e', 'SELECT model, version, stage, run_id FROM model_versions WHERE job_id = $1', [h.workflowId]);
    assert.deepEqual(rows, [{ model: 'spirals', version: 1, stage: 'production', run_id: (await h.describe()).runId }]);
    const decisions = await pg.sql('kiln_e2e', 'SELECT kind FROM decisions ORDER BY id');
    assert.deepEqual(decisions.map((r) => r.kind), ['promoted']);
    assert.equal(fs.existsSync(path.join(env.home, 'registry.sqlite')), false, 'neither worker opened a SQLite registry');

    // What a GPU worker keeps in retention comes with the job: prepareJob (control) looks it up.
    const reg = await openRegistry(env.config);
    // The real activity, run with the SDK's activity context (its dataset check heartbeats).
    const prepareJob = createPrepareJob({ config: env.config, registry: async () => reg! } as unknown as CommonDeps);
    const prepare = (spec: JobSpec, jobId: string): Promise<PreparedJob> => new MockActivityEnvironment().run(prepareJob, spec, jobId);
    try {
      const v1 = (await reg!.getByJob(h.workflowId))!;
      const again = await prepare(buildSpec(env.config, 'spirals', {}), h.workflowId);
      assert.deepEqual(again.pinned, [v1.artifactPath, v1.checkpointPath].sort(), 'a job id with a registered version carries its pinned paths');
      assert.ok(again.pinned!.every((p) => p.startsWith(again.workDir + path.sep)));
      const other = await prepare(buildSpec(env.config, 'spirals', {}), 'train-spirals-unregistered');
      assert.equal(other.pinned, undefined, 'nothing pinned in a fresh work dir');
    } finally {
      await reg!.close();
    }

    const listed = await runKiln(env, ['models', 'list', '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    const versions = JSON.parse(listed.stdout) as Array<{ model: string; version: number; jobId: string; stage: string }>;
    assert.deepEqual(versions.map((v) => [v.model, v.version, v.jobId, v.stage]), [['spirals', 1, h.workflowId, 'production']]);
    const human = await runKiln(env, ['models', 'list', '--stage', 'archived']);
    assert.equal(human.code, 0);
    assert.match(human.stdout, /no versions in stage archived; registry: postgres:\/\/kiln:\*\*\*@127\.0\.0\.1:\d+\/kiln_e2e/);
    const check = await runKiln(env, ['config', 'check']);
    assert.match(check.stdout, /registry postgres:\/\/kiln:\*\*\*@127\.0\.0\.1/);
    for (const out of [listed, human, check]) noSecret(out.stdout + out.stderr);
    noSecret(fs.readFileSync(gpu.logFile, 'utf8'));
  });

  test('a wrong password, an unreachable server or a non-postgres URL: kiln worker control stops at start with the reason', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['wrong-password.yaml', yamlWith(`postgres://kiln:not-the-password@127.0.0.1:${pg.port}/kiln_e2e`), /cannot use the model registry at postgres:\/\/kiln:\*\*\*@127\.0\.0\.1:\d+\/kiln_e2e: .*the server refused the login/],
      ['unreachable.yaml', yamlWith(`postgres://kiln:${pg.password}@127.0.0.1:1/kiln_e2e`), /cannot use the model registry at postgres:\/\/kiln:\*\*\*@127\.0\.0\.1:1\/kiln_e2e: .*nothing answers there/],
      ['not-postgres.yaml', yamlWith('mysql://kiln@db/kiln'), /registry\.url: a postgres:\/\/ URL/],
    ];
    for (const [name, yaml, why] of cases) {
      const r = await runKiln(env, ['worker', 'control'], { env: { KILN_CONFIG: writeConfig(name, yaml) }, timeoutMs: 30_000 });
      assert.equal(r.code, 1, `${name}: ${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, why, name);
      assert.ok(!(r.stdout + r.stderr).includes('worker started'), `${name}: the worker must not start`);
      noSecret(r.stdout + r.stderr);
      if (name === 'not-postgres.yaml') continue;
      // The CLI refuses the same way, and changes nothing.
      const cli = await runKiln(env, ['models', 'list'], { env: { KILN_CONFIG: path.join(env.home, name) }, timeoutMs: 30_000 });
      assert.equal(cli.code, 1, `${name}: ${cli.stdout}\n${cli.stderr}`);
      assert.match(cli.stderr, new RegExp(`kiln models list: ${why.source}`), name);
      noSecret(cli.stdout + cli.stderr);
    }
  });

  test('doctor: S3 storage and the PostgreSQL registry pass; a missing bucket, an unreachable endpoint, a wrong password fail with fixes', async () => {
    const bucket = `kiln-doctor-${process.pid}`;
    const create = await fetch(`${moto.endpoint}/${bucket}`, { method: 'PUT' });
    assert.ok(create.ok, `create bucket: ${create.status}`);
    const s3 = (b: string, endpoint = moto.endpoint) =>
      `storage:\n  kind: s3\n  bucket: ${b}\n  endpoint: ${endpoint}\n  forcePathStyle: true\n  accessKeyId: testing\n  secretAccessKey: testing\n`;
    const doctor = async (file: string) => {
      const r = await runKiln(env, ['doctor', '--json'], { env: { KILN_CONFIG: file, ...moto.env }, timeoutMs: 60_000 });
      noSecret(r.stdout + r.stderr);
      const checks = (JSON.parse(r.stdout) as { checks: DoctorCheck[] }).checks;
      return { code: r.code, storage: checks.find((c) => c.id === 'storage')!, registry: checks.find((c) => c.id === 'registry')! };
    };

    const good = await doctor(writeConfig('doctor-good.yaml', yamlWith(url, s3(bucket))));
    assert.equal(good.storage.status, 'ok', JSON.stringify(good.storage));
    assert.match(good.storage.detail, new RegExp(`s3://${bucket}.*conditional writes refused as they must be, deleted`));
    assert.equal(good.registry.status, 'ok', JSON.stringify(good.registry));
    assert.match(good.registry.detail, new RegExp(`PostgreSQL postgres://kiln:\\*\\*\\*@127\\.0\\.0\\.1:\\d+/kiln_e2e: schema version ${PG_SCHEMA_VERSION}\\b`));
    const left = await fetch(`${moto.endpoint}/${bucket}?list-type=2`).then((r) => r.text());
    assert.doesNotMatch(left, /<Key>/, 'the probe object was deleted');

    const missing = await doctor(writeConfig('doctor-nobucket.yaml', yamlWith(url, s3('kiln-no-such-bucket'))));
    assert.equal(missing.code, 1);
    assert.equal(missing.storage.status, 'fail');
    assert.match(missing.storage.detail, /kiln-no-such-bucket does not exist/);
    assert.match(missing.storage.hint!, /create the bucket/);

    const down = await doctor(writeConfig('doctor-down.yaml', yamlWith(`postgres://kiln:not-the-password@127.0.0.1:${pg.port}/kiln_e2e`, s3(bucket, 'http://127.0.0.1:1'))));
    assert.equal(down.code, 1);
    assert.equal(down.storage.status, 'fail');
    assert.match(down.storage.detail, /cannot reach the storage/);
    assert.match(down.storage.hint!, /storage\.endpoint/);
    assert.equal(down.registry.status, 'fail');
    assert.match(down.registry.detail, /cannot use the model registry at postgres:\/\/kiln:\*\*\*@/);
    assert.match(down.registry.hint!, /refused the login: check the user and password in registry\.url/);

    const empty = await doctor(writeConfig('doctor-empty.yaml', yamlWith(await pg.createDatabase('kiln_empty'), s3(bucket))));
    assert.equal(empty.registry.status, 'warn');
    assert.match(empty.registry.detail, /schema version 0 \(empty\)/);
    assert.match(empty.registry.hint!, /the control worker migrates it when it starts/);
    assert.deepEqual(await pg.sql('kiln_empty', "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"), [], 'doctor created nothing');
  });
});
