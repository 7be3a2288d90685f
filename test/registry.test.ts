import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import Database from 'better-sqlite3';
import {
  MIGRATIONS,
  PG_MIGRATIONS,
  SCHEMA_VERSION,
  PostgresModelRegistry,
  PromotionPolicy,
  RegisterInput,
  RegistryError,
  SqliteModelRegistry,
  evaluatePromotion,
  formatMetric,
  missingRequired,
  redactUrl,
  type ModelRegistry,
  type ModelVersion,
} from '../src/registry';
import { noPostgres, startPostgres, type PgCluster } from './helpers/postgres';

const REGISTRY_MODULE = path.join(__dirname, '..', 'src', 'registry', 'index.js');
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-registry-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

let dbCounter = 0;
function freshDbPath(): string {
  dbCounter += 1;
  return path.join(tmpRoot, `case-${dbCounter}`, 'nested', 'registry.db');
}

// One PostgreSQL cluster for the file; each case gets a database of its own.
const pgSkip = noPostgres();
let pg: PgCluster | undefined;
before(async () => {
  if (!pgSkip) pg = await startPostgres();
});
after(async () => {
  const pid = pg?.pid;
  await pg?.stop();
  if (pid !== undefined) assert.throws(() => process.kill(pid, 0), 'the postmaster is gone');
});

/** A backend: `fresh` makes an empty registry location (a file path or a database URL), `open` opens it. */
interface Backend {
  name: string;
  skip: string | false;
  fresh(): Promise<string>;
  open(target: string): Promise<ModelRegistry>;
}

const BACKENDS: Backend[] = [
  { name: 'SQLite', skip: false, fresh: async () => freshDbPath(), open: async (p) => new SqliteModelRegistry(p) },
  { name: 'PostgreSQL', skip: pgSkip, fresh: () => pg!.createDatabase(), open: (url) => PostgresModelRegistry.open(url) },
];

function input(over: Partial<RegisterInput> & { jobId: string }): RegisterInput {
  return {
    model: 'sentiment',
    runId: `run-${over.jobId}`,
    trainer: 'hf-finetune',
    params: { lr: 3e-4, epochs: 2 },
    datasetFingerprint: 'sha256:abc',
    baseCheckpoint: null,
    metrics: { val_loss: 0.1, accuracy: 0.9 },
    artifactPath: `/models/${over.jobId}/model.safetensors`,
    checkpointPath: `/ckpt/${over.jobId}/step-100`,
    requiredMetrics: ['val_loss'],
    ...over,
  };
}

async function withRegistry(b: Backend, fn: (reg: ModelRegistry) => Promise<void>): Promise<void> {
  const reg = await b.open(await b.fresh());
  try {
    await fn(reg);
  } finally {
    await reg.close();
  }
}

function registryError(code: string): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof RegistryError, `expected RegistryError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.name, 'RegistryError');
    return true;
  };
}

function runNode(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code}: ${err}`))));
  });
}

// In a separate process: opens the registry (a file path or a postgres:// URL), registers the jobs
// given as argv[4..] and, with promote=1, promotes each new version; prints [{version, created}].
const CHILD_REGISTER = `
  const { SqliteModelRegistry, PostgresModelRegistry } = require(process.argv[1]);
  const [target, model, promote, ...jobs] = process.argv.slice(2);
  (async () => {
    const reg = target.startsWith('postgres') ? await PostgresModelRegistry.open(target) : new SqliteModelRegistry(target);
    const out = [];
    for (const jobId of jobs) {
      const r = await reg.register({
        model, jobId, runId: 'r-' + jobId, trainer: 't', params: { pid: process.pid },
        datasetFingerprint: 'fp', baseCheckpoint: null, metrics: { val_loss: 0.5 },
        artifactPath: null, checkpointPath: '/ckpt/' + jobId, requiredMetrics: ['val_loss'],
      });
      if (promote === '1') await reg.promote(model, r.version.version, { reason: 'race ' + jobId });
      out.push({ version: r.version.version, created: r.created });
    }
    await reg.close();
    process.stdout.write(JSON.stringify(out));
  })().catch((e) => { console.error(e); process.exit(1); });
`;

const child = (target: string, model: string, jobs: string[], promote = false) => runNode(CHILD_REGISTER, [REGISTRY_MODULE, target, model, promote ? '1' : '0', ...jobs]);

function semanticSuite(b: Backend): void {
  test('register stores every field and computes completeness', async () => {
    await withRegistry(b, async (reg) => {
      const { version: v, created } = await reg.register(
        input({ jobId: 'job-1', metrics: { val_loss: 0.08, accuracy: Number.NaN }, requiredMetrics: ['val_loss', 'accuracy'] }),
      );
      assert.equal(created, true);
      assert.equal(v.version, 1);
      assert.equal(v.stage, 'candidate');
      assert.equal(v.complete, false);
      assert.deepEqual(v.missingMetrics, ['accuracy']);
      assert.deepEqual(v.metrics, { val_loss: 0.08 });
      assert.deepEqual(v.params, { lr: 3e-4, epochs: 2 });
      assert.deepEqual(v.decisions, []);
      assert.ok(!Number.isNaN(Date.parse(v.createdAt)));
      assert.deepEqual(await reg.get('sentiment', 1), v);
      assert.deepEqual(await reg.getByJob('job-1'), v);
      assert.equal(await reg.get('sentiment', 2), null);
      assert.equal(await reg.getByJob('nope'), null);
    });
  });

  test('register is idempotent by jobId', async () => {
    await withRegistry(b, async (reg) => {
      const first = await reg.register(input({ jobId: 'job-1' }));
      const again = await reg.register(input({ jobId: 'job-1', metrics: { val_loss: 0.01 } }));
      assert.equal(again.created, false);
      assert.deepEqual(again.version, first.version);
      assert.equal((await reg.list()).length, 1);
      await assert.rejects(() => reg.register(input({ jobId: 'job-1', model: 'other' })), registryError('JOB_CONFLICT'));
      await assert.rejects(() => reg.register(input({ jobId: '' })), registryError('INVALID_INPUT'));
    });
  });

  test('a retried activity on a second connection does not register twice', async () => {
    const target = await b.fresh();
    const a = await b.open(target);
    const c = await b.open(target);
    try {
      const first = await a.register(input({ jobId: 'wf-42' }));
      const retry = await c.register(input({ jobId: 'wf-42' }));
      assert.equal(first.created, true);
      assert.equal(retry.created, false);
      assert.equal(retry.version.version, first.version.version);
      assert.equal((await a.list()).length, 1);
      assert.equal((await c.list()).length, 1);
    } finally {
      await a.close();
      await c.close();
    }
  });

  test('a reused job id from another run returns the first run\'s version unchanged (the activity refuses it)', async () => {
    await withRegistry(b, async (reg) => {
      const first = await reg.register(input({ jobId: 'wf-reused', runId: 'run-1' }));
      const other = await reg.register(input({ jobId: 'wf-reused', runId: 'run-2', metrics: { val_loss: 0.5 } }));
      assert.equal(other.created, false);
      assert.equal(other.version.runId, 'run-1');
      assert.deepEqual(other.version.metrics, first.version.metrics);
      assert.equal((await reg.list()).length, 1);
    });
  });

  test('versions are monotonic per model, independent across models', async () => {
    await withRegistry(b, async (reg) => {
      const order = [
        ['a', 'j1'],
        ['b', 'j2'],
        ['a', 'j3'],
        ['a', 'j4'],
        ['b', 'j5'],
      ];
      const seq: ModelVersion[] = [];
      for (const [model, jobId] of order as Array<[string, string]>) seq.push((await reg.register(input({ model, jobId }))).version);
      assert.deepEqual(
        seq.map((v) => `${v.model}${v.version}`),
        ['a1', 'b1', 'a2', 'a3', 'b2'],
      );
      assert.deepEqual(
        (await reg.list({ model: 'a' })).map((v) => v.version),
        [1, 2, 3],
      );
      assert.equal((await reg.list()).length, 5);
      assert.equal(await reg.lastTrainedAt('a'), seq[3].createdAt);
      assert.equal(await reg.lastTrainedAt('zzz'), null);
    });
  });

  test('incomplete versions cannot be promoted and nothing changes', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await reg.promote('sentiment', 1, { reason: 'first', by: 'policy' });
      await reg.register(input({ jobId: 'j2', metrics: {} }));
      const before = await reg.list();
      await assert.rejects(() => reg.promote('sentiment', 2, { reason: 'x', by: null }), (err: unknown) => {
        registryError('INCOMPLETE')(err);
        assert.match((err as Error).message, /val_loss/);
        assert.equal((err as RegistryError).version, 2);
        return true;
      });
      await assert.rejects(() => reg.rollback('sentiment', { to: 2, reason: 'x' }), registryError('INCOMPLETE'));
      assert.deepEqual(await reg.list(), before);
      assert.equal((await reg.production('sentiment'))?.version, 1);
    });
  });

  test('promote archives the previous production version and records decisions on both', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await reg.register(input({ jobId: 'j2' }));
      assert.equal(await reg.production('sentiment'), null);
      const v1 = await reg.promote('sentiment', 1, { reason: 'promoted: first version', by: 'policy' });
      assert.equal(v1.stage, 'production');
      assert.equal(v1.decisions.at(-1)?.kind, 'promoted');
      const v2 = await reg.promote('sentiment', 2, { reason: 'approved by alice', by: 'alice', kind: 'approved' });
      assert.equal(v2.stage, 'production');
      assert.deepEqual(
        v2.decisions.map((d) => [d.kind, d.reason, d.by]),
        [['approved', 'approved by alice', 'alice']],
      );
      const old = await reg.get('sentiment', 1);
      assert.equal(old?.stage, 'archived');
      assert.equal(old?.decisions.at(-1)?.kind, 'archived');
      assert.match(old?.decisions.at(-1)?.reason ?? '', /superseded by v2/);
      assert.equal((await reg.production('sentiment'))?.version, 2);
      assert.deepEqual(
        (await reg.list({ stage: 'production' })).map((v) => v.version),
        [2],
      );
      // Retrying the same promotion is a no-op.
      const retry = await reg.promote('sentiment', 2, { reason: 'approved by alice', by: 'alice', kind: 'approved' });
      assert.equal(retry.decisions.length, 1);
    });
  });

  test('recordDecision appends, and ignores an exact repeat of the latest decision', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await reg.recordDecision('sentiment', 1, { kind: 'kept-candidate', reason: 'kept candidate: x', by: null });
      await reg.recordDecision('sentiment', 1, { kind: 'kept-candidate', reason: 'kept candidate: x', by: null });
      const v = await reg.recordDecision('sentiment', 1, { kind: 'rejected', reason: 'bad', by: 'bob', at: '2030-01-01T00:00:00.000Z' });
      assert.deepEqual(
        v.decisions.map((d) => d.kind),
        ['kept-candidate', 'rejected'],
      );
      assert.equal(v.decisions[1].at, '2030-01-01T00:00:00.000Z');
      assert.equal(v.stage, 'candidate');
      await assert.rejects(() => reg.recordDecision('sentiment', 9, { kind: 'rejected', reason: 'x' }), registryError('UNKNOWN_VERSION'));
    });
  });

  test('rollback: implicit goes to the previous production version, explicit to the given one', async () => {
    await withRegistry(b, async (reg) => {
      for (const j of ['j1', 'j2', 'j3', 'j4']) await reg.register(input({ jobId: j }));
      await reg.promote('sentiment', 1, { reason: 'r1' });
      await reg.promote('sentiment', 3, { reason: 'r3' }); // v2 was never production
      await reg.promote('sentiment', 4, { reason: 'r4' });

      const back = await reg.rollback('sentiment', { reason: 'p99 latency regression', by: 'oncall' });
      assert.equal(back.version, 3);
      assert.equal(back.stage, 'production');
      const last = back.decisions.at(-1);
      assert.equal(last?.kind, 'rollback');
      assert.equal(last?.by, 'oncall');
      assert.match(last?.reason ?? '', /rollback from v4: p99 latency regression/);
      const v4 = await reg.get('sentiment', 4);
      assert.equal(v4?.stage, 'archived');
      assert.match(v4?.decisions.at(-1)?.reason ?? '', /rolled back to v3: p99 latency regression/);

      // Repeated implicit rollbacks keep walking back, skipping never-production v2.
      assert.equal((await reg.rollback('sentiment', { reason: 'again' })).version, 1);
      await assert.rejects(() => reg.rollback('sentiment', { reason: 'again' }), registryError('NO_PREVIOUS'));

      const explicit = await reg.rollback('sentiment', { to: 2, reason: 'pin known-good', by: 'alice' });
      assert.equal(explicit.version, 2);
      assert.equal((await reg.get('sentiment', 1))?.stage, 'archived');
      // Explicit rollback to the current production version is a retry-safe no-op.
      assert.equal((await reg.rollback('sentiment', { to: 2, reason: 'pin known-good', by: 'alice' })).decisions.length, 1);
      assert.deepEqual(
        (await reg.list({ stage: 'production' })).map((v) => v.version),
        [2],
      );
    });
  });

  test('implicit rollback falls back to the previous complete version', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await reg.register(input({ jobId: 'j2', metrics: {} }));
      await reg.register(input({ jobId: 'j3' }));
      await reg.promote('sentiment', 3, { reason: 'manual', kind: 'manual-promote', by: 'alice' });
      assert.equal((await reg.rollback('sentiment', { reason: 'bad' })).version, 1);
    });
  });

  test('unknown model / version errors', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await assert.rejects(() => reg.promote('nope', 1, { reason: 'x' }), registryError('UNKNOWN_MODEL'));
      await assert.rejects(() => reg.promote('sentiment', 7, { reason: 'x' }), registryError('UNKNOWN_VERSION'));
      await assert.rejects(() => reg.rollback('nope', { reason: 'x' }), registryError('UNKNOWN_MODEL'));
      await assert.rejects(() => reg.rollback('sentiment', { reason: 'x' }), registryError('NO_PRODUCTION'));
      await assert.rejects(() => reg.rollback('sentiment', { to: 5, reason: 'x' }), registryError('UNKNOWN_VERSION'));
      await assert.rejects(() => reg.recordDecision('nope', 1, { kind: 'rejected', reason: 'x' }), registryError('UNKNOWN_MODEL'));
      assert.equal(await reg.production('nope'), null);
    });
  });

  test('pinnedCheckpoints and isPinned cover every registered version', async () => {
    await withRegistry(b, async (reg) => {
      await reg.register(input({ jobId: 'j1' }));
      await reg.register(input({ jobId: 'j2', artifactPath: null, checkpointPath: 's3://bucket/ckpt/j2/' }));
      await reg.register(input({ jobId: 'j3', artifactPath: null, checkpointPath: null }));
      await reg.promote('sentiment', 1, { reason: 'x' });
      await reg.promote('sentiment', 2, { reason: 'y' }); // archived v1 stays pinned
      assert.deepEqual(await reg.pinnedCheckpoints(), ['/ckpt/j1/step-100', '/models/j1/model.safetensors', 's3://bucket/ckpt/j2/']);
      assert.equal(await reg.isPinned('/ckpt/j1/step-100'), true);
      assert.equal(await reg.isPinned('/ckpt/j1/step-100/'), true);
      assert.equal(await reg.isPinned('/ckpt/j1/step-100/optimizer.pt'), true, 'inside a pinned checkpoint');
      assert.equal(await reg.isPinned('/ckpt/j1'), true, 'deleting the parent would delete the pin');
      assert.equal(await reg.isPinned('/ckpt/j1/step-10'), false);
      assert.equal(await reg.isPinned('/ckpt/j1/step-1000'), false);
      assert.equal(await reg.isPinned('s3://bucket/ckpt/j2'), true);
      assert.equal(await reg.isPinned('s3://bucket/ckpt/j22'), false);
    });
  });
}

for (const b of BACKENDS) {
  describe(`${b.name} registry`, { skip: b.skip }, () => {
    semanticSuite(b);
    concurrencySuite(b);
  });
}

function concurrencySuite(b: Backend): void {
  test('data written by another process survives close and reopen', async () => {
    const target = await b.fresh();
    const out = JSON.parse(await child(target, 'vision', ['wf-a', 'wf-b'])) as unknown;
    assert.deepEqual(out, [
      { version: 1, created: true },
      { version: 2, created: true },
    ]);
    const reg = await b.open(target);
    try {
      assert.deepEqual(
        (await reg.list({ model: 'vision' })).map((v) => [v.version, v.jobId, v.complete]),
        [
          [1, 'wf-a', true],
          [2, 'wf-b', true],
        ],
      );
      assert.equal((await reg.register(input({ model: 'vision', jobId: 'wf-b' }))).created, false);
    } finally {
      await reg.close();
    }
  });

  test('concurrent registration from 4 processes yields distinct consecutive versions', async () => {
    const target = await b.fresh();
    await (await b.open(target)).close();
    const perChild = 5;
    const outs = await Promise.all([0, 1, 2, 3].map((c) => child(target, 'llm', Array.from({ length: perChild }, (_, i) => `c${c}-j${i}`))));
    const results = outs.flatMap((o) => JSON.parse(o) as { version: number; created: boolean }[]);
    assert.ok(results.every((r) => r.created));
    assert.deepEqual(
      results.map((r) => r.version).sort((x, y) => x - y),
      Array.from({ length: 4 * perChild }, (_, i) => i + 1),
    );
    const reg = await b.open(target);
    try {
      assert.equal((await reg.list({ model: 'llm' })).length, 4 * perChild);
    } finally {
      await reg.close();
    }
  });

  test('concurrent retries of one job from 4 processes create exactly one version', async () => {
    // Nothing opened before: the processes also race to create and migrate the schema.
    const target = await b.fresh();
    const outs = await Promise.all([0, 1, 2, 3].map(() => child(target, 'llm', ['wf-same'])));
    const results = outs.flatMap((o) => JSON.parse(o) as { version: number; created: boolean }[]);
    assert.equal(results.filter((r) => r.created).length, 1);
    assert.ok(results.every((r) => r.version === 1));
  });

  test('4 processes registering and promoting at once: one version per job, one production per model', async () => {
    const target = await b.fresh();
    // Every process registers the same 6 jobs (retries of each other) of two models and promotes what it got.
    const jobs = (m: string) => Array.from({ length: 6 }, (_, i) => `${m}-job-${i}`);
    const outs = await Promise.all([0, 1, 2, 3].map((c) => child(target, c % 2 ? 'alpha' : 'beta', c < 2 ? jobs(c % 2 ? 'alpha' : 'beta') : [...jobs(c % 2 ? 'alpha' : 'beta')].reverse(), true)));
    const results = outs.flatMap((o) => JSON.parse(o) as { version: number; created: boolean }[]);
    assert.equal(results.filter((r) => r.created).length, 12, 'each of the 12 jobs created once');
    const reg = await b.open(target);
    try {
      for (const m of ['alpha', 'beta']) {
        const versions = await reg.list({ model: m });
        assert.deepEqual(versions.map((v) => v.jobId).sort(), jobs(m).sort(), `${m}: one version per job`);
        assert.deepEqual(versions.map((v) => v.version), [1, 2, 3, 4, 5, 6]);
        assert.equal(versions.filter((v) => v.stage === 'production').length, 1, `${m}: exactly one production version`);
      }
    } finally {
      await reg.close();
    }
  });
}

describe('SQLite registry migrations', () => {
  test('migrations run once; reopening changes nothing', async () => {
    const dbPath = freshDbPath();
    await new SqliteModelRegistry(dbPath).close();
    const reg = new SqliteModelRegistry(dbPath);
    await reg.register(input({ jobId: 'j1' }));
    assert.equal(await reg.schemaVersion(), SCHEMA_VERSION);
    await reg.close();
    await new SqliteModelRegistry(dbPath).close();
    const db = new Database(dbPath, { readonly: true });
    try {
      assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
      const rows = db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all();
      assert.deepEqual(
        rows,
        MIGRATIONS.map((m) => ({ version: m.version, name: m.name })),
      );
    } finally {
      db.close();
    }
  });

  test('an older schema is upgraded in place, keeping its data', async () => {
    const dbPath = freshDbPath();
    fs.mkdirSync(path.dirname(dbPath), { recursive: true });
    const db = new Database(dbPath);
    db.exec(MIGRATIONS[0].sql);
    db.prepare(
      `INSERT INTO model_versions (model, version, job_id, run_id, trainer, params_json, dataset_fingerprint,
         base_checkpoint, metrics_json, artifact_path, checkpoint_path, created_at, stage, complete, missing_metrics_json)
       VALUES ('old', 1, 'legacy-job', 'r', 't', '{}', 'fp', NULL, '{"val_loss":0.2}', NULL, '/ckpt/legacy', '2024-01-01T00:00:00.000Z', 'production', 1, '[]')`,
    ).run();
    db.pragma('user_version = 1');
    db.close();

    const reg = new SqliteModelRegistry(dbPath);
    try {
      assert.equal((await reg.production('old'))?.jobId, 'legacy-job');
      await reg.register(input({ model: 'old', jobId: 'new-job' }));
      await reg.promote('old', 2, { reason: 'newer' });
      assert.equal((await reg.rollback('old', { reason: 'back' })).version, 1);
    } finally {
      await reg.close();
    }
  });

  test('a database from a newer schema is refused and left untouched', () => {
    const dbPath = freshDbPath();
    fs.mkdirSync(path.dirname(dbPath), { recursive: true });
    const db = new Database(dbPath);
    db.exec('CREATE TABLE future (x INTEGER)');
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    const before = fs.readFileSync(dbPath);

    assert.throws(() => new SqliteModelRegistry(dbPath), (err: unknown) => {
      registryError('SCHEMA_TOO_NEW')(err);
      assert.match((err as Error).message, /newer than this code supports/);
      return true;
    });
    assert.deepEqual(fs.readFileSync(dbPath), before);
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
  });
});

describe('PostgreSQL registry migrations and connection errors', { skip: pgSkip }, () => {
  const tables = async (db: string) => (await pg!.sql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")).map((r) => r.tablename);
  const dbOf = (url: string) => new URL(url).pathname.slice(1);

  test('migrations run once; reopening changes nothing', async () => {
    const url = await pg!.createDatabase();
    await (await PostgresModelRegistry.open(url)).close();
    const reg = await PostgresModelRegistry.open(url);
    await reg.register(input({ jobId: 'j1' }));
    assert.equal(await reg.schemaVersion(), SCHEMA_VERSION);
    await reg.close();
    await (await PostgresModelRegistry.open(url)).close();
    const rows = await pg!.sql(dbOf(url), 'SELECT version, name FROM schema_migrations ORDER BY version');
    assert.deepEqual(rows, PG_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
    assert.deepEqual(await tables(dbOf(url)), ['decisions', 'model_versions', 'promotion_hooks', 'schema_migrations', 'stage_history', 'version_artifacts']);
    const [{ n }] = await pg!.sql(dbOf(url), 'SELECT COUNT(*)::int AS n FROM model_versions');
    assert.equal(n, 1);
  });

  test('the database enforces one production version per model and unique job ids', async () => {
    const url = await pg!.createDatabase();
    const reg = await PostgresModelRegistry.open(url);
    try {
      await reg.register(input({ jobId: 'j1' }));
      await reg.register(input({ jobId: 'j2' }));
      await reg.promote('sentiment', 1, { reason: 'x' });
      await assert.rejects(() => pg!.sql(dbOf(url), "UPDATE model_versions SET stage = 'production' WHERE job_id = 'j2'"), /model_versions_one_production/);
      await assert.rejects(() => pg!.sql(dbOf(url), "UPDATE model_versions SET job_id = 'j1' WHERE job_id = 'j2'"), /job_id/);
    } finally {
      await reg.close();
    }
  });

  test('an older schema is upgraded in place, keeping its data', async () => {
    const url = await pg!.createDatabase();
    const db = dbOf(url);
    await pg!.sql(db, 'CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
    await pg!.sql(db, PG_MIGRATIONS[0]!.sql);
    await pg!.sql(db, "INSERT INTO schema_migrations VALUES (1, 'versions-and-decisions', '2024-01-01')");
    await pg!.sql(
      db,
      `INSERT INTO model_versions (model, version, job_id, run_id, trainer, params_json, dataset_fingerprint,
         base_checkpoint, metrics_json, artifact_path, checkpoint_path, created_at, stage, complete, missing_metrics_json)
       VALUES ('old', 1, 'legacy-job', 'r', 't', '{}', 'fp', NULL, '{"val_loss":0.2}', NULL, '/ckpt/legacy', '2024-01-01T00:00:00.000Z', 'production', 1, '[]')`,
    );
    await pg!.sql(db, 'GRANT ALL ON ALL TABLES IN SCHEMA public TO kiln');
    const reg = await PostgresModelRegistry.open(url);
    try {
      assert.equal(await reg.schemaVersion(), SCHEMA_VERSION);
      assert.equal((await reg.production('old'))?.jobId, 'legacy-job');
      await reg.register(input({ model: 'old', jobId: 'new-job' }));
      await reg.promote('old', 2, { reason: 'newer' });
      assert.equal((await reg.rollback('old', { reason: 'back' })).version, 1);
    } finally {
      await reg.close();
    }
  });

  test('a database from a newer schema is refused and left untouched', async () => {
    const url = await pg!.createDatabase();
    await (await PostgresModelRegistry.open(url)).close();
    await pg!.sql(dbOf(url), `INSERT INTO schema_migrations VALUES (${SCHEMA_VERSION + 1}, 'future', '2030-01-01')`);
    const before = await tables(dbOf(url));
    await assert.rejects(() => PostgresModelRegistry.open(url), (err: unknown) => {
      registryError('SCHEMA_TOO_NEW')(err);
      assert.match((err as Error).message, /newer than this code supports/);
      assert.ok(!(err as Error).message.includes(pg!.password), 'no password in the message');
      return true;
    });
    assert.deepEqual(await tables(dbOf(url)), before);
    assert.equal((await pg!.sql(dbOf(url), 'SELECT MAX(version) AS v FROM schema_migrations'))[0]!.v, SCHEMA_VERSION + 1);
  });

  test('wrong password, unknown database and nothing listening: UNAVAILABLE naming the cause, no password shown', async () => {
    const cases: Array<[string, RegExp]> = [
      [`postgres://kiln:not-the-password@127.0.0.1:${pg!.port}/kiln_nope`, /refused the login.*password/],
      [pg!.url('no_such_database'), /database does not exist/],
      [`postgres://kiln:${pg!.password}@127.0.0.1:1/kiln`, /nothing answers there/],
    ];
    for (const [url, why] of cases) {
      await assert.rejects(() => PostgresModelRegistry.open(url, { connectTimeoutMs: 3000 }), (err: unknown) => {
        registryError('UNAVAILABLE')(err);
        const msg = (err as Error).message;
        assert.match(msg, why);
        assert.match(msg, /postgres:\/\/kiln:\*\*\*@127\.0\.0\.1/);
        assert.ok(!msg.includes(pg!.password) && !msg.includes('not-the-password'), `no password in: ${msg}`);
        return true;
      });
    }
  });

  test('redactUrl masks the password and password parameters', () => {
    assert.equal(redactUrl('postgres://kiln:s3cr%40t@db:5432/kiln?sslmode=require'), 'postgres://kiln:***@db:5432/kiln?sslmode=require');
    assert.equal(redactUrl('postgresql://db/kiln?user=kiln&password=hunter2'), 'postgresql://db/kiln?user=kiln&password=***');
    assert.equal(redactUrl('postgres://db/kiln'), 'postgres://db/kiln');
  });
});

describe('promotion policy', () => {
  const minLoss: PromotionPolicy = { metric: 'val_loss', direction: 'min', minImprovement: 0.005, mode: 'auto' };
  const complete = (metrics: Record<string, number>) => ({ metrics, complete: true, missingMetrics: [] });
  const prod = (version: number, metrics: Record<string, number>) => ({ version, metrics });

  test('min / absolute', () => {
    const win = evaluatePromotion(minLoss, complete({ val_loss: 0.081 }), prod(3, { val_loss: 0.09 }));
    assert.equal(win.promote, true);
    assert.equal(win.requiresApproval, false);
    assert.equal(win.reason, 'promoted: val_loss 0.081 < 0.09 - 0.005 (production v3)');
    const lose = evaluatePromotion(minLoss, complete({ val_loss: 0.095 }), prod(3, { val_loss: 0.09 }));
    assert.equal(lose.promote, false);
    assert.equal(lose.reason, 'kept candidate: val_loss 0.095 is not < 0.09 - 0.005 (production v3)');
    // Improvement smaller than the margin is not enough.
    assert.equal(evaluatePromotion(minLoss, complete({ val_loss: 0.086 }), prod(3, { val_loss: 0.09 })).promote, false);
    // Default margin 0 needs a strict improvement.
    const strict: PromotionPolicy = { metric: 'val_loss', direction: 'min', mode: 'auto' };
    assert.equal(evaluatePromotion(strict, complete({ val_loss: 0.09 }), prod(1, { val_loss: 0.09 })).promote, false);
    const tiny = evaluatePromotion(strict, complete({ val_loss: 0.0899 }), prod(1, { val_loss: 0.09 }));
    assert.equal(tiny.reason, 'promoted: val_loss 0.0899 < 0.09 (production v1)');
  });

  test('max / relative', () => {
    const policy: PromotionPolicy = { metric: 'accuracy', direction: 'max', minImprovement: 0.02, improvementKind: 'relative', mode: 'auto' };
    const win = evaluatePromotion(policy, complete({ accuracy: 0.92 }), prod(2, { accuracy: 0.9 }));
    assert.equal(win.promote, true);
    assert.equal(win.reason, 'promoted: accuracy 0.92 > 0.9 + 2% (0.918) (production v2)');
    const lose = evaluatePromotion(policy, complete({ accuracy: 0.915 }), prod(2, { accuracy: 0.9 }));
    assert.equal(lose.promote, false);
    assert.equal(lose.reason, 'kept candidate: accuracy 0.915 is not > 0.9 + 2% (0.918) (production v2)');
    // Relative margin is taken on |production| so negative metrics still need to get better.
    const negMin: PromotionPolicy = { metric: 'nll', direction: 'min', minImprovement: 0.1, improvementKind: 'relative', mode: 'auto' };
    assert.equal(evaluatePromotion(negMin, complete({ nll: -1.05 }), prod(1, { nll: -1 })).promote, false);
    assert.equal(evaluatePromotion(negMin, complete({ nll: -1.2 }), prod(1, { nll: -1 })).promote, true);
  });

  test('no production yet, approval mode, incomplete and missing metrics', () => {
    const first = evaluatePromotion(minLoss, complete({ val_loss: 0.3 }), null);
    assert.deepEqual(first, { promote: true, requiresApproval: false, reason: 'promoted: first version of the model (no production yet)' });
    const gated = evaluatePromotion({ ...minLoss, mode: 'approval' }, complete({ val_loss: 0.3 }), null);
    assert.equal(gated.promote, true);
    assert.equal(gated.requiresApproval, true);
    assert.match(gated.reason, /approval required/);
    const incomplete = evaluatePromotion(minLoss, { metrics: {}, complete: false, missingMetrics: ['val_loss'] }, prod(3, { val_loss: 0.09 }));
    assert.deepEqual(incomplete, {
      promote: false,
      requiresApproval: false,
      reason: 'not promotable: incomplete, missing required metrics val_loss',
    });
    assert.equal(evaluatePromotion(minLoss, complete({ accuracy: 0.9 }), null).reason, 'not promotable: missing policy metric val_loss');
    const noBaseline = evaluatePromotion(minLoss, complete({ val_loss: 0.01 }), prod(4, { accuracy: 0.5 }));
    assert.equal(noBaseline.promote, false);
    assert.match(noBaseline.reason, /production v4 has no val_loss/);
    assert.throws(() => evaluatePromotion({ ...minLoss, minImprovement: -1 }, complete({ val_loss: 0.01 }), null), RangeError);
  });

  test('missingRequired and formatMetric', () => {
    assert.deepEqual(missingRequired(['a', 'b', 'c', 'd', 'a'], { a: 1, b: Number.NaN, c: null }), ['b', 'c', 'd']);
    assert.deepEqual(missingRequired([], {}), []);
    assert.equal(missingRequired(['toString'], {}).length, 1);
    assert.equal(formatMetric(0.0812345), '0.08123');
    assert.equal(formatMetric(123456), '123500');
    assert.equal(formatMetric(0.09), '0.09');
    assert.equal(formatMetric(0), '0');
  });
});
