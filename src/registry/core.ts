/**
 * The registry's logic, written once against a small SQL interface that SQLite and PostgreSQL both
 * implement (sqlite.ts, postgres.ts). Every write runs in one transaction that holds the registry's
 * write lock (BEGIN IMMEDIATE; pg_advisory_xact_lock), so reads that decide a write (next version
 * number, current production) cannot race another process; the unique indexes back that up.
 */
import { missingRequired } from './promotion';
import { pinnedBy } from './pinned';
import {
  Decision,
  DecisionInput,
  DecisionKind,
  ListFilter,
  ModelRegistry,
  ModelVersion,
  PromoteOptions,
  ProductionChange,
  RegisterInput,
  RegisterResult,
  RegistryError,
  RollbackOptions,
  Stage,
} from './types';

/** Statements use `?` placeholders; a driver rewrites them for its database. */
export interface Tx {
  all<T>(sql: string, args?: unknown[]): Promise<T[]>;
  get<T>(sql: string, args?: unknown[]): Promise<T | undefined>;
  run(sql: string, args?: unknown[]): Promise<void>;
  /** Runs an INSERT into a table with an `id` key and returns the new id. */
  insert(sql: string, args?: unknown[]): Promise<number>;
}

export interface Driver {
  readonly where: string;
  read<T>(fn: (tx: Tx) => Promise<T>): Promise<T>;
  /** One transaction holding the registry's write lock; rolled back when fn throws. */
  write<T>(fn: (tx: Tx) => Promise<T>): Promise<T>;
  schemaVersion(): Promise<number>;
  close(): Promise<void>;
}

interface VersionRow {
  id: number;
  model: string;
  version: number;
  job_id: string;
  run_id: string;
  trainer: string;
  params_json: string;
  dataset_fingerprint: string;
  base_checkpoint: string | null;
  metrics_json: string;
  artifact_path: string | null;
  checkpoint_path: string | null;
  created_at: string;
  stage: Stage;
  complete: number;
  missing_metrics_json: string;
}

interface DecisionRow {
  at: string;
  kind: DecisionKind;
  reason: string;
  by: string | null;
}

const DECISION_COLS = 'at, kind, reason, "by"';

function finiteMetrics(metrics: Record<string, number | null | undefined>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  }
  return out;
}

async function hydrate(tx: Tx, row: VersionRow): Promise<ModelVersion> {
  const decisions = await tx.all<DecisionRow>(`SELECT ${DECISION_COLS} FROM decisions WHERE version_id = ? ORDER BY id`, [row.id]);
  const stored = await tx.get<{ artifacts_json: string }>('SELECT artifacts_json FROM version_artifacts WHERE version_id = ?', [row.id]);
  return {
    model: row.model,
    version: Number(row.version),
    jobId: row.job_id,
    runId: row.run_id,
    trainer: row.trainer,
    params: JSON.parse(row.params_json) as Record<string, unknown>,
    datasetFingerprint: row.dataset_fingerprint,
    baseCheckpoint: row.base_checkpoint,
    metrics: JSON.parse(row.metrics_json) as Record<string, number>,
    artifactPath: row.artifact_path,
    artifacts: stored ? (JSON.parse(stored.artifacts_json) as ModelVersion['artifacts']) : [],
    checkpointPath: row.checkpoint_path,
    createdAt: row.created_at,
    stage: row.stage,
    complete: Number(row.complete) === 1,
    missingMetrics: JSON.parse(row.missing_metrics_json) as string[],
    decisions: decisions.map((d): Decision => ({ at: d.at, kind: d.kind, reason: d.reason, by: d.by })),
  };
}

const rowByJob = (tx: Tx, jobId: string) => tx.get<VersionRow>('SELECT * FROM model_versions WHERE job_id = ?', [jobId]);
const rowById = async (tx: Tx, id: number) => (await tx.get<VersionRow>('SELECT * FROM model_versions WHERE id = ?', [id]))!;
const productionRow = (tx: Tx, model: string) => tx.get<VersionRow>("SELECT * FROM model_versions WHERE model = ? AND stage = 'production'", [model]);

async function recordStage(tx: Tx, versionId: number, stage: Stage, at: string): Promise<void> {
  await tx.run('INSERT INTO stage_history (version_id, stage, at) VALUES (?, ?, ?)', [versionId, stage, at]);
}

async function insertDecision(tx: Tx, versionId: number, kind: DecisionKind, reason: string, by: string | null, at?: string): Promise<void> {
  await tx.run(`INSERT INTO decisions (version_id, ${DECISION_COLS}) VALUES (?, ?, ?, ?, ?)`, [versionId, at ?? new Date().toISOString(), kind, reason, by]);
}

async function requireModel(tx: Tx, model: string): Promise<void> {
  const row = await tx.get('SELECT 1 AS one FROM model_versions WHERE model = ? LIMIT 1', [model]);
  if (!row) throw new RegistryError('UNKNOWN_MODEL', `unknown model ${JSON.stringify(model)}`, { model });
}

async function requireVersion(tx: Tx, model: string, version: number): Promise<VersionRow> {
  const row = await tx.get<VersionRow>('SELECT * FROM model_versions WHERE model = ? AND version = ?', [model, version]);
  if (row) return row;
  await requireModel(tx, model);
  throw new RegistryError('UNKNOWN_VERSION', `model ${model} has no version ${version}`, { model, version });
}

async function requirePromotable(tx: Tx, model: string, version: number): Promise<VersionRow> {
  const row = await requireVersion(tx, model, version);
  if (Number(row.complete) !== 1) {
    const missing = JSON.parse(row.missing_metrics_json) as string[];
    throw new RegistryError(
      'INCOMPLETE',
      `${model} v${version} is incomplete (missing required metrics ${missing.join(', ') || 'unknown'}) and cannot become production`,
      { model, version },
    );
  }
  return row;
}

/** The version below `current` that most recently held production, else the newest complete one below it. */
async function previousProduction(tx: Tx, current: VersionRow): Promise<VersionRow | null> {
  const wasProduction = await tx.get<VersionRow>(
    `SELECT v.* FROM model_versions v JOIN stage_history h ON h.version_id = v.id
     WHERE v.model = ? AND v.version < ? AND v.complete = 1 AND h.stage = 'production'
     ORDER BY h.id DESC LIMIT 1`,
    [current.model, current.version],
  );
  if (wasProduction) return wasProduction;
  const complete = await tx.get<VersionRow>('SELECT * FROM model_versions WHERE model = ? AND version < ? AND complete = 1 ORDER BY version DESC LIMIT 1', [current.model, current.version]);
  return complete ?? null;
}

async function makeProduction(tx: Tx, target: VersionRow, kind: DecisionKind, reason: string, by: string | null, archivedReason: (v: number) => string): Promise<ModelVersion> {
  const current = await productionRow(tx, target.model);
  if (current && current.id === target.id) return hydrate(tx, target);
  const now = new Date().toISOString();
  if (current) {
    // Archive first: the partial unique index allows one production row per model.
    await tx.run('UPDATE model_versions SET stage = ? WHERE id = ?', ['archived', current.id]);
    await recordStage(tx, current.id, 'archived', now);
    await insertDecision(tx, current.id, kind === 'rollback' ? 'rollback' : 'archived', archivedReason(Number(target.version)), by, now);
  }
  await tx.run('UPDATE model_versions SET stage = ? WHERE id = ?', ['production', target.id]);
  await recordStage(tx, target.id, 'production', now);
  await insertDecision(tx, target.id, kind, reason, by, now);
  return hydrate(tx, await rowById(tx, target.id));
}

async function registerIn(tx: Tx, input: RegisterInput): Promise<RegisterResult> {
  const existing = await rowByJob(tx, input.jobId);
  if (existing) {
    if (existing.model !== input.model) {
      throw new RegistryError('JOB_CONFLICT', `job ${input.jobId} is already registered as ${existing.model} v${existing.version}, not as model ${input.model}`, {
        model: existing.model,
        version: Number(existing.version),
      });
    }
    return { version: await hydrate(tx, existing), created: false };
  }
  const next = (await tx.get<{ v: number }>('SELECT COALESCE(MAX(version), 0) + 1 AS v FROM model_versions WHERE model = ?', [input.model]))!;
  const metrics = finiteMetrics(input.metrics);
  const missing = missingRequired(input.requiredMetrics, metrics);
  const createdAt = input.createdAt ?? new Date().toISOString();
  const id = await tx.insert(
    `INSERT INTO model_versions (model, version, job_id, run_id, trainer, params_json, dataset_fingerprint,
       base_checkpoint, metrics_json, artifact_path, checkpoint_path, created_at, stage, complete, missing_metrics_json)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?)`,
    [
      input.model,
      Number(next.v),
      input.jobId,
      input.runId,
      input.trainer,
      JSON.stringify(input.params ?? {}),
      input.datasetFingerprint,
      input.baseCheckpoint,
      JSON.stringify(metrics),
      input.artifactPath,
      input.checkpointPath,
      createdAt,
      missing.length === 0 ? 1 : 0,
      JSON.stringify(missing),
    ],
  );
  if (input.artifacts?.length) await tx.run('INSERT INTO version_artifacts (version_id, artifacts_json) VALUES (?, ?)', [id, JSON.stringify(input.artifacts)]);
  await recordStage(tx, id, 'candidate', createdAt);
  return { version: await hydrate(tx, await rowById(tx, id)), created: true };
}

async function rollbackIn(tx: Tx, model: string, opts: RollbackOptions): Promise<ModelVersion> {
  await requireModel(tx, model);
  const current = await productionRow(tx, model);
  let target: VersionRow;
  if (opts.to !== undefined) {
    target = await requirePromotable(tx, model, opts.to);
  } else {
    if (!current) throw new RegistryError('NO_PRODUCTION', `cannot roll back ${model}: it has no production version`, { model });
    const previous = await previousProduction(tx, current);
    if (!previous) {
      throw new RegistryError('NO_PREVIOUS', `cannot roll back ${model}: no complete version earlier than production v${current.version}`, { model, version: Number(current.version) });
    }
    target = previous;
  }
  const from = current ? `v${current.version}` : 'no production';
  return makeProduction(tx, target, 'rollback', `rollback from ${from}: ${opts.reason}`, opts.by ?? null, (v) => `rolled back to v${v}: ${opts.reason}`);
}

interface ChangeRow {
  id: number;
  model: string;
  version: number;
  at: string;
  ran: number | null;
}

const CHANGES = `SELECT h.id, v.model, v.version, h.at, p.change_id AS ran FROM stage_history h
  JOIN model_versions v ON v.id = h.version_id LEFT JOIN promotion_hooks p ON p.change_id = h.id
  WHERE v.model = ? AND h.stage = 'production'`;

const change = (r: ChangeRow): ProductionChange => ({ id: Number(r.id), model: r.model, version: Number(r.version), at: r.at, hookRan: r.ran !== null });

/** The registry over a driver: the same semantics on every backend. */
export class SqlModelRegistry implements ModelRegistry {
  constructor(protected readonly driver: Driver) {}

  get where(): string {
    return this.driver.where;
  }

  register(input: RegisterInput): Promise<RegisterResult> {
    if (!input.model || !input.jobId) {
      return Promise.reject(new RegistryError('INVALID_INPUT', 'register: model and jobId must be non-empty strings', { model: input.model }));
    }
    return this.driver.write((tx) => registerIn(tx, input));
  }

  get(model: string, version: number): Promise<ModelVersion | null> {
    return this.driver.read(async (tx) => {
      const row = await tx.get<VersionRow>('SELECT * FROM model_versions WHERE model = ? AND version = ?', [model, version]);
      return row ? hydrate(tx, row) : null;
    });
  }

  getByJob(jobId: string): Promise<ModelVersion | null> {
    return this.driver.read(async (tx) => {
      const row = await rowByJob(tx, jobId);
      return row ? hydrate(tx, row) : null;
    });
  }

  list(filter: ListFilter = {}): Promise<ModelVersion[]> {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.model !== undefined) {
      where.push('model = ?');
      args.push(filter.model);
    }
    if (filter.stage !== undefined) {
      where.push('stage = ?');
      args.push(filter.stage);
    }
    const sql = `SELECT * FROM model_versions ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY model, version`;
    return this.driver.read(async (tx) => {
      const out: ModelVersion[] = [];
      for (const r of await tx.all<VersionRow>(sql, args)) out.push(await hydrate(tx, r));
      return out;
    });
  }

  production(model: string): Promise<ModelVersion | null> {
    return this.driver.read(async (tx) => {
      const row = await productionRow(tx, model);
      return row ? hydrate(tx, row) : null;
    });
  }

  promote(model: string, version: number, opts: PromoteOptions): Promise<ModelVersion> {
    return this.driver.write(async (tx) => {
      const target = await requirePromotable(tx, model, version);
      return makeProduction(tx, target, opts.kind ?? 'promoted', opts.reason, opts.by ?? null, (v) => `superseded by v${v}: ${opts.reason}`);
    });
  }

  recordDecision(model: string, version: number, decision: DecisionInput): Promise<ModelVersion> {
    return this.driver.write(async (tx) => {
      const row = await requireVersion(tx, model, version);
      const by = decision.by ?? null;
      const last = await tx.get<DecisionRow>(`SELECT ${DECISION_COLS} FROM decisions WHERE version_id = ? ORDER BY id DESC LIMIT 1`, [row.id]);
      // An activity retried after a lost ack repeats the same decision; log it once.
      const repeat = last !== undefined && last.kind === decision.kind && last.reason === decision.reason && last.by === by;
      if (!repeat) await insertDecision(tx, row.id, decision.kind, decision.reason, by, decision.at);
      return hydrate(tx, row);
    });
  }

  rollback(model: string, opts: RollbackOptions): Promise<ModelVersion> {
    return this.driver.write((tx) => rollbackIn(tx, model, opts));
  }

  pinnedCheckpoints(): Promise<string[]> {
    return this.driver.read(async (tx) => {
      const rows = await tx.all<{ p: string }>(
        `SELECT checkpoint_path AS p FROM model_versions WHERE checkpoint_path IS NOT NULL
         UNION SELECT artifact_path FROM model_versions WHERE artifact_path IS NOT NULL`,
      );
      // Sorted here: the databases' collations differ.
      return rows.map((r) => r.p).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    });
  }

  async isPinned(candidate: string): Promise<boolean> {
    return pinnedBy(await this.pinnedCheckpoints(), candidate);
  }

  lastTrainedAt(model: string): Promise<string | null> {
    return this.driver.read(async (tx) => {
      const row = await tx.get<{ created_at: string }>('SELECT created_at FROM model_versions WHERE model = ? ORDER BY version DESC LIMIT 1', [model]);
      return row ? row.created_at : null;
    });
  }

  productionChange(model: string, version: number): Promise<ProductionChange | null> {
    return this.driver.read(async (tx) => (await tx.all<ChangeRow>(`${CHANGES} AND v.version = ? ORDER BY h.id DESC LIMIT 1`, [model, version])).map(change)[0] ?? null);
  }

  productionChanges(model: string, afterId: number): Promise<ProductionChange[]> {
    return this.driver.read(async (tx) => (await tx.all<ChangeRow>(`${CHANGES} AND h.id > ? ORDER BY h.id`, [model, afterId])).map(change));
  }

  recordHookRun(change: ProductionChange, by: string): Promise<boolean> {
    return this.driver.write(async (tx) => {
      const had = await tx.get('SELECT 1 AS one FROM promotion_hooks WHERE change_id = ?', [change.id]);
      if (had) return false;
      await tx.run('INSERT INTO promotion_hooks (change_id, model, version, ran_at, ran_by) VALUES (?, ?, ?, ?, ?)', [change.id, change.model, change.version, new Date().toISOString(), by]);
      return true;
    });
  }

  schemaVersion(): Promise<number> {
    return this.driver.schemaVersion();
  }

  close(): Promise<void> {
    return this.driver.close();
  }
}
