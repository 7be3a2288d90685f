import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import Database from 'better-sqlite3';
import {
  MIGRATIONS,
  SCHEMA_VERSION,
  PromotionPolicy,
  RegisterInput,
  RegistryError,
  SqliteModelRegistry,
  evaluatePromotion,
  formatMetric,
  missingRequired,
} from '../src/registry';

const REGISTRY_MODULE = path.join(__dirname, '..', 'src', 'registry', 'index.js');
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-registry-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

let dbCounter = 0;
function freshDbPath(): string {
  dbCounter += 1;
  return path.join(tmpRoot, `case-${dbCounter}`, 'nested', 'registry.db');
}

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

function withRegistry(fn: (reg: SqliteModelRegistry, dbPath: string) => void): void {
  const dbPath = freshDbPath();
  const reg = new SqliteModelRegistry(dbPath);
  try {
    fn(reg, dbPath);
  } finally {
    reg.close();
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

// Registers jobs given as argv[3..] in a separate process, printing [{version, created}].
const CHILD_REGISTER = `
  const { SqliteModelRegistry } = require(process.argv[1]);
  const [dbPath, model, ...jobs] = process.argv.slice(2);
  const reg = new SqliteModelRegistry(dbPath);
  const out = [];
  for (const jobId of jobs) {
    const r = reg.register({
      model, jobId, runId: 'r-' + jobId, trainer: 't', params: { pid: process.pid },
      datasetFingerprint: 'fp', baseCheckpoint: null, metrics: { val_loss: 0.5 },
      artifactPath: null, checkpointPath: '/ckpt/' + jobId, requiredMetrics: ['val_loss'],
    });
    out.push({ version: r.version.version, created: r.created });
  }
  reg.close();
  process.stdout.write(JSON.stringify(out));
`;

describe('SqliteModelRegistry', () => {
  test('register stores every field and computes completeness', () => {
    withRegistry((reg) => {
      const { version: v, created } = reg.register(
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
      assert.deepEqual(reg.get('sentiment', 1), v);
      assert.deepEqual(reg.getByJob('job-1'), v);
      assert.equal(reg.get('sentiment', 2), null);
      assert.equal(reg.getByJob('nope'), null);
    });
  });

  test('register is idempotent by jobId', () => {
    withRegistry((reg) => {
      const first = reg.register(input({ jobId: 'job-1' }));
      const again = reg.register(input({ jobId: 'job-1', metrics: { val_loss: 0.01 } }));
      assert.equal(again.created, false);
      assert.deepEqual(again.version, first.version);
      assert.equal(reg.list().length, 1);
      assert.throws(() => reg.register(input({ jobId: 'job-1', model: 'other' })), registryError('JOB_CONFLICT'));
      assert.throws(() => reg.register(input({ jobId: '' })), registryError('INVALID_INPUT'));
    });
  });

  test('a retried activity on a second connection does not register twice', () => {
    const dbPath = freshDbPath();
    const a = new SqliteModelRegistry(dbPath);
    const b = new SqliteModelRegistry(dbPath);
    try {
      const first = a.register(input({ jobId: 'wf-42' }));
      const retry = b.register(input({ jobId: 'wf-42' }));
      assert.equal(first.created, true);
      assert.equal(retry.created, false);
      assert.equal(retry.version.version, first.version.version);
      assert.equal(a.list().length, 1);
      assert.equal(b.list().length, 1);
    } finally {
      a.close();
      b.close();
    }
  });

  test('versions are monotonic per model, independent across models', () => {
    withRegistry((reg) => {
      const seq = [
        ['a', 'j1'],
        ['b', 'j2'],
        ['a', 'j3'],
        ['a', 'j4'],
        ['b', 'j5'],
      ].map(([model, jobId]) => reg.register(input({ model, jobId })).version);
      assert.deepEqual(
        seq.map((v) => `${v.model}${v.version}`),
        ['a1', 'b1', 'a2', 'a3', 'b2'],
      );
      assert.deepEqual(
        reg.list({ model: 'a' }).map((v) => v.version),
        [1, 2, 3],
      );
      assert.equal(reg.list().length, 5);
      assert.equal(reg.lastTrainedAt('a'), seq[3].createdAt);
      assert.equal(reg.lastTrainedAt('zzz'), null);
    });
  });

  test('incomplete versions cannot be promoted and nothing changes', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      reg.promote('sentiment', 1, { reason: 'first', by: 'policy' });
      reg.register(input({ jobId: 'j2', metrics: {} }));
      const before = reg.list();
      assert.throws(() => reg.promote('sentiment', 2, { reason: 'x', by: null }), (err: unknown) => {
        registryError('INCOMPLETE')(err);
        assert.match((err as Error).message, /val_loss/);
        assert.equal((err as RegistryError).version, 2);
        return true;
      });
      assert.throws(() => reg.rollback('sentiment', { to: 2, reason: 'x' }), registryError('INCOMPLETE'));
      assert.deepEqual(reg.list(), before);
      assert.equal(reg.production('sentiment')?.version, 1);
    });
  });

  test('promote archives the previous production version and records decisions on both', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      reg.register(input({ jobId: 'j2' }));
      assert.equal(reg.production('sentiment'), null);
      const v1 = reg.promote('sentiment', 1, { reason: 'promoted: first version', by: 'policy' });
      assert.equal(v1.stage, 'production');
      assert.equal(v1.decisions.at(-1)?.kind, 'promoted');
      const v2 = reg.promote('sentiment', 2, { reason: 'approved by alice', by: 'alice', kind: 'approved' });
      assert.equal(v2.stage, 'production');
      assert.deepEqual(
        v2.decisions.map((d) => [d.kind, d.reason, d.by]),
        [['approved', 'approved by alice', 'alice']],
      );
      const old = reg.get('sentiment', 1);
      assert.equal(old?.stage, 'archived');
      assert.equal(old?.decisions.at(-1)?.kind, 'archived');
      assert.match(old?.decisions.at(-1)?.reason ?? '', /superseded by v2/);
      assert.equal(reg.production('sentiment')?.version, 2);
      assert.deepEqual(
        reg.list({ stage: 'production' }).map((v) => v.version),
        [2],
      );
      // Retrying the same promotion is a no-op.
      const retry = reg.promote('sentiment', 2, { reason: 'approved by alice', by: 'alice', kind: 'approved' });
      assert.equal(retry.decisions.length, 1);
    });
  });

  test('recordDecision appends, and ignores an exact repeat of the latest decision', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      reg.recordDecision('sentiment', 1, { kind: 'kept-candidate', reason: 'kept candidate: x', by: null });
      reg.recordDecision('sentiment', 1, { kind: 'kept-candidate', reason: 'kept candidate: x', by: null });
      const v = reg.recordDecision('sentiment', 1, { kind: 'rejected', reason: 'bad', by: 'bob', at: '2030-01-01T00:00:00.000Z' });
      assert.deepEqual(
        v.decisions.map((d) => d.kind),
        ['kept-candidate', 'rejected'],
      );
      assert.equal(v.decisions[1].at, '2030-01-01T00:00:00.000Z');
      assert.equal(v.stage, 'candidate');
      assert.throws(() => reg.recordDecision('sentiment', 9, { kind: 'rejected', reason: 'x' }), registryError('UNKNOWN_VERSION'));
    });
  });

  test('rollback: implicit goes to the previous production version, explicit to the given one', () => {
    withRegistry((reg) => {
      for (const j of ['j1', 'j2', 'j3', 'j4']) reg.register(input({ jobId: j }));
      reg.promote('sentiment', 1, { reason: 'r1' });
      reg.promote('sentiment', 3, { reason: 'r3' }); // v2 was never production
      reg.promote('sentiment', 4, { reason: 'r4' });

      const back = reg.rollback('sentiment', { reason: 'p99 latency regression', by: 'oncall' });
      assert.equal(back.version, 3);
      assert.equal(back.stage, 'production');
      const last = back.decisions.at(-1);
      assert.equal(last?.kind, 'rollback');
      assert.equal(last?.by, 'oncall');
      assert.match(last?.reason ?? '', /rollback from v4: p99 latency regression/);
      const v4 = reg.get('sentiment', 4);
      assert.equal(v4?.stage, 'archived');
      assert.match(v4?.decisions.at(-1)?.reason ?? '', /rolled back to v3: p99 latency regression/);

      // Repeated implicit rollbacks keep walking back, skipping never-production v2.
      assert.equal(reg.rollback('sentiment', { reason: 'again' }).version, 1);
      assert.throws(() => reg.rollback('sentiment', { reason: 'again' }), registryError('NO_PREVIOUS'));

      const explicit = reg.rollback('sentiment', { to: 2, reason: 'pin known-good', by: 'alice' });
      assert.equal(explicit.version, 2);
      assert.equal(reg.get('sentiment', 1)?.stage, 'archived');
      // Explicit rollback to the current production version is a retry-safe no-op.
      assert.equal(reg.rollback('sentiment', { to: 2, reason: 'pin known-good', by: 'alice' }).decisions.length, 1);
      assert.deepEqual(
        reg.list({ stage: 'production' }).map((v) => v.version),
        [2],
      );
    });
  });

  test('implicit rollback falls back to the previous complete version', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      reg.register(input({ jobId: 'j2', metrics: {} }));
      reg.register(input({ jobId: 'j3' }));
      reg.promote('sentiment', 3, { reason: 'manual', kind: 'manual-promote', by: 'alice' });
      assert.equal(reg.rollback('sentiment', { reason: 'bad' }).version, 1);
    });
  });

  test('unknown model / version errors', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      assert.throws(() => reg.promote('nope', 1, { reason: 'x' }), registryError('UNKNOWN_MODEL'));
      assert.throws(() => reg.promote('sentiment', 7, { reason: 'x' }), registryError('UNKNOWN_VERSION'));
      assert.throws(() => reg.rollback('nope', { reason: 'x' }), registryError('UNKNOWN_MODEL'));
      assert.throws(() => reg.rollback('sentiment', { reason: 'x' }), registryError('NO_PRODUCTION'));
      assert.throws(() => reg.rollback('sentiment', { to: 5, reason: 'x' }), registryError('UNKNOWN_VERSION'));
      assert.throws(() => reg.recordDecision('nope', 1, { kind: 'rejected', reason: 'x' }), registryError('UNKNOWN_MODEL'));
      assert.equal(reg.production('nope'), null);
    });
  });

  test('pinnedCheckpoints and isPinned cover every registered version', () => {
    withRegistry((reg) => {
      reg.register(input({ jobId: 'j1' }));
      reg.register(input({ jobId: 'j2', artifactPath: null, checkpointPath: 's3://bucket/ckpt/j2/' }));
      reg.register(input({ jobId: 'j3', artifactPath: null, checkpointPath: null }));
      reg.promote('sentiment', 1, { reason: 'x' });
      reg.promote('sentiment', 2, { reason: 'y' }); // archived v1 stays pinned
      assert.deepEqual(reg.pinnedCheckpoints(), ['/ckpt/j1/step-100', '/models/j1/model.safetensors', 's3://bucket/ckpt/j2/']);
      assert.equal(reg.isPinned('/ckpt/j1/step-100'), true);
      assert.equal(reg.isPinned('/ckpt/j1/step-100/'), true);
      assert.equal(reg.isPinned('/ckpt/j1/step-100/optimizer.pt'), true, 'inside a pinned checkpoint');
      assert.equal(reg.isPinned('/ckpt/j1'), true, 'deleting the parent would delete the pin');
      assert.equal(reg.isPinned('/ckpt/j1/step-10'), false);
      assert.equal(reg.isPinned('/ckpt/j1/step-1000'), false);
      assert.equal(reg.isPinned('s3://bucket/ckpt/j2'), true);
      assert.equal(reg.isPinned('s3://bucket/ckpt/j22'), false);
    });
  });
});

describe('SqliteModelRegistry persistence and migrations', () => {
  test('data written by another process survives close and reopen', async () => {
    const dbPath = freshDbPath();
    const out = JSON.parse(await runNode(CHILD_REGISTER, [REGISTRY_MODULE, dbPath, 'vision', 'wf-a', 'wf-b'])) as unknown;
    assert.deepEqual(out, [
      { version: 1, created: true },
      { version: 2, created: true },
    ]);
    const reg = new SqliteModelRegistry(dbPath);
    try {
      assert.deepEqual(
        reg.list({ model: 'vision' }).map((v) => [v.version, v.jobId, v.complete]),
        [
          [1, 'wf-a', true],
          [2, 'wf-b', true],
        ],
      );
      assert.equal(reg.register(input({ model: 'vision', jobId: 'wf-b' })).created, false);
    } finally {
      reg.close();
    }
  });

  test('migrations run once; reopening changes nothing', () => {
    const dbPath = freshDbPath();
    new SqliteModelRegistry(dbPath).close();
    const reg = new SqliteModelRegistry(dbPath);
    reg.register(input({ jobId: 'j1' }));
    reg.close();
    new SqliteModelRegistry(dbPath).close();
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

  test('an older schema is upgraded in place, keeping its data', () => {
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
      assert.equal(reg.production('old')?.jobId, 'legacy-job');
      reg.register(input({ model: 'old', jobId: 'new-job' }));
      reg.promote('old', 2, { reason: 'newer' });
      assert.equal(reg.rollback('old', { reason: 'back' }).version, 1);
    } finally {
      reg.close();
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

  test('concurrent registration from 4 processes yields distinct consecutive versions', async () => {
    const dbPath = freshDbPath();
    new SqliteModelRegistry(dbPath).close();
    const perChild = 5;
    const outs = await Promise.all(
      [0, 1, 2, 3].map((c) =>
        runNode(CHILD_REGISTER, [REGISTRY_MODULE, dbPath, 'llm', ...Array.from({ length: perChild }, (_, i) => `c${c}-j${i}`)]),
      ),
    );
    const results = outs.flatMap((o) => JSON.parse(o) as { version: number; created: boolean }[]);
    assert.ok(results.every((r) => r.created));
    assert.deepEqual(
      results.map((r) => r.version).sort((a, b) => a - b),
      Array.from({ length: 4 * perChild }, (_, i) => i + 1),
    );
    const reg = new SqliteModelRegistry(dbPath);
    try {
      assert.equal(reg.list({ model: 'llm' }).length, 4 * perChild);
    } finally {
      reg.close();
    }
  });

  test('concurrent retries of one job from 4 processes create exactly one version', async () => {
    // No pre-created file: the processes also race to create and migrate the database.
    const dbPath = freshDbPath();
    const outs = await Promise.all([0, 1, 2, 3].map(() => runNode(CHILD_REGISTER, [REGISTRY_MODULE, dbPath, 'llm', 'wf-same'])));
    const results = outs.flatMap((o) => JSON.parse(o) as { version: number; created: boolean }[]);
    assert.equal(results.filter((r) => r.created).length, 1);
    assert.ok(results.every((r) => r.version === 1));
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
