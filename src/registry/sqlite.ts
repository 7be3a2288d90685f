import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { openMigrated } from './migrations';
import { missingRequired } from './promotion';
import {
  Decision,
  DecisionInput,
  DecisionKind,
  ListFilter,
  ModelRegistry,
  ModelVersion,
  PromoteOptions,
  RegisterInput,
  RegisterResult,
  RegistryError,
  RollbackOptions,
  Stage,
} from './types';

export { MIGRATIONS, SCHEMA_VERSION, type Migration } from './migrations';

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

const URI = /^[a-z][a-z0-9+.-]*:\/\//i;

function normalizePath(p: string): string {
  if (URI.test(p)) return p.replace(/\/+$/, '');
  return path.resolve(p);
}

function contains(parent: string, child: string): boolean {
  if (parent === child) return true;
  const prefix = parent.endsWith('/') || parent.endsWith(path.sep) ? parent : parent + (URI.test(parent) ? '/' : path.sep);
  return child.startsWith(prefix);
}

function finiteMetrics(metrics: Record<string, number | null | undefined>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  }
  return out;
}

/**
 * SQLite-backed registry shared by worker processes through one file (WAL,
 * busy_timeout). Every write runs in a BEGIN IMMEDIATE transaction, so reads
 * that decide a write (next version number, current production) cannot race
 * another process.
 */
export class SqliteModelRegistry implements ModelRegistry {
  readonly dbPath: string;
  private readonly db: Database.Database;

  constructor(dbPath: string) {
    this.dbPath = dbPath;
    if (dbPath !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(dbPath)), { recursive: true });
    this.db = openMigrated(dbPath);
  }

  register(input: RegisterInput): RegisterResult {
    if (!input.model || !input.jobId) {
      throw new RegistryError('INVALID_INPUT', 'register: model and jobId must be non-empty strings', { model: input.model });
    }
    return this.db.transaction((): RegisterResult => {
      const existing = this.rowByJob(input.jobId);
      if (existing) {
        if (existing.model !== input.model) {
          throw new RegistryError(
            'JOB_CONFLICT',
            `job ${input.jobId} is already registered as ${existing.model} v${existing.version}, not as model ${input.model}`,
            { model: existing.model, version: existing.version },
          );
        }
        return { version: this.hydrate(existing), created: false };
      }
      const next = this.db
        .prepare('SELECT COALESCE(MAX(version), 0) + 1 AS v FROM model_versions WHERE model = ?')
        .get(input.model) as { v: number };
      const metrics = finiteMetrics(input.metrics);
      const missing = missingRequired(input.requiredMetrics, metrics);
      const createdAt = input.createdAt ?? new Date().toISOString();
      const info = this.db
        .prepare(
          `INSERT INTO model_versions (model, version, job_id, run_id, trainer, params_json, dataset_fingerprint,
             base_checkpoint, metrics_json, artifact_path, checkpoint_path, created_at, stage, complete, missing_metrics_json)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?)`,
        )
        .run(
          input.model,
          next.v,
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
        );
      const id = Number(info.lastInsertRowid);
      this.recordStage(id, 'candidate', createdAt);
      return { version: this.hydrate(this.rowById(id)), created: true };
    }).immediate();
  }

  get(model: string, version: number): ModelVersion | null {
    const row = this.db.prepare('SELECT * FROM model_versions WHERE model = ? AND version = ?').get(model, version) as
      | VersionRow
      | undefined;
    return row ? this.hydrate(row) : null;
  }

  getByJob(jobId: string): ModelVersion | null {
    const row = this.rowByJob(jobId);
    return row ? this.hydrate(row) : null;
  }

  list(filter: ListFilter = {}): ModelVersion[] {
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
    return (this.db.prepare(sql).all(...args) as VersionRow[]).map((r) => this.hydrate(r));
  }

  production(model: string): ModelVersion | null {
    const row = this.productionRow(model);
    return row ? this.hydrate(row) : null;
  }

  promote(model: string, version: number, opts: PromoteOptions): ModelVersion {
    return this.db.transaction((): ModelVersion => {
      const target = this.requirePromotable(model, version);
      return this.makeProduction(target, opts.kind ?? 'promoted', opts.reason, opts.by ?? null, (v) => `superseded by v${v}: ${opts.reason}`);
    }).immediate();
  }

  recordDecision(model: string, version: number, decision: DecisionInput): ModelVersion {
    return this.db.transaction((): ModelVersion => {
      const row = this.requireVersion(model, version);
      const by = decision.by ?? null;
      const last = this.db
        .prepare('SELECT at, kind, reason, by FROM decisions WHERE version_id = ? ORDER BY id DESC LIMIT 1')
        .get(row.id) as DecisionRow | undefined;
      // An activity retried after a lost ack repeats the same decision; log it once.
      const repeat = last !== undefined && last.kind === decision.kind && last.reason === decision.reason && last.by === by;
      if (!repeat) this.insertDecision(row.id, decision.kind, decision.reason, by, decision.at);
      return this.hydrate(row);
    }).immediate();
  }

  rollback(model: string, opts: RollbackOptions): ModelVersion {
    return this.db.transaction((): ModelVersion => {
      this.requireModel(model);
      const current = this.productionRow(model);
      let target: VersionRow;
      if (opts.to !== undefined) {
        target = this.requirePromotable(model, opts.to);
      } else {
        if (!current) {
          throw new RegistryError('NO_PRODUCTION', `cannot roll back ${model}: it has no production version`, { model });
        }
        const previous = this.previousProduction(current);
        if (!previous) {
          throw new RegistryError(
            'NO_PREVIOUS',
            `cannot roll back ${model}: no complete version earlier than production v${current.version}`,
            { model, version: current.version },
          );
        }
        target = previous;
      }
      const from = current ? `v${current.version}` : 'no production';
      return this.makeProduction(target, 'rollback', `rollback from ${from}: ${opts.reason}`, opts.by ?? null, (v) => `rolled back to v${v}: ${opts.reason}`);
    }).immediate();
  }

  pinnedCheckpoints(): string[] {
    const rows = this.db
      .prepare(
        `SELECT checkpoint_path AS p FROM model_versions WHERE checkpoint_path IS NOT NULL
         UNION SELECT artifact_path FROM model_versions WHERE artifact_path IS NOT NULL ORDER BY 1`,
      )
      .all() as { p: string }[];
    return rows.map((r) => r.p);
  }

  isPinned(candidate: string): boolean {
    const p = normalizePath(candidate);
    return this.pinnedCheckpoints().some((pinned) => {
      const q = normalizePath(pinned);
      return contains(p, q) || contains(q, p);
    });
  }

  lastTrainedAt(model: string): string | null {
    const row = this.db
      .prepare('SELECT created_at FROM model_versions WHERE model = ? ORDER BY version DESC LIMIT 1')
      .get(model) as { created_at: string } | undefined;
    return row ? row.created_at : null;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // --- internals (callers hold the transaction) ---

  private makeProduction(
    target: VersionRow,
    kind: DecisionKind,
    reason: string,
    by: string | null,
    archivedReason: (newVersion: number) => string,
  ): ModelVersion {
    const current = this.productionRow(target.model);
    if (current && current.id === target.id) return this.hydrate(target);
    const now = new Date().toISOString();
    const setStage = this.db.prepare('UPDATE model_versions SET stage = ? WHERE id = ?');
    if (current) {
      // Archive first: the partial unique index allows one production row per model.
      setStage.run('archived', current.id);
      this.recordStage(current.id, 'archived', now);
      this.insertDecision(current.id, kind === 'rollback' ? 'rollback' : 'archived', archivedReason(target.version), by, now);
    }
    setStage.run('production', target.id);
    this.recordStage(target.id, 'production', now);
    this.insertDecision(target.id, kind, reason, by, now);
    return this.hydrate(this.rowById(target.id));
  }

  /** The version below `current` that most recently held production, else the newest complete one below it. */
  private previousProduction(current: VersionRow): VersionRow | null {
    const wasProduction = this.db
      .prepare(
        `SELECT v.* FROM model_versions v JOIN stage_history h ON h.version_id = v.id
         WHERE v.model = ? AND v.version < ? AND v.complete = 1 AND h.stage = 'production'
         ORDER BY h.id DESC LIMIT 1`,
      )
      .get(current.model, current.version) as VersionRow | undefined;
    if (wasProduction) return wasProduction;
    const complete = this.db
      .prepare('SELECT * FROM model_versions WHERE model = ? AND version < ? AND complete = 1 ORDER BY version DESC LIMIT 1')
      .get(current.model, current.version) as VersionRow | undefined;
    return complete ?? null;
  }

  private requireModel(model: string): void {
    const row = this.db.prepare('SELECT 1 AS one FROM model_versions WHERE model = ? LIMIT 1').get(model);
    if (!row) throw new RegistryError('UNKNOWN_MODEL', `unknown model ${JSON.stringify(model)}`, { model });
  }

  private requireVersion(model: string, version: number): VersionRow {
    const row = this.db.prepare('SELECT * FROM model_versions WHERE model = ? AND version = ?').get(model, version) as
      | VersionRow
      | undefined;
    if (row) return row;
    this.requireModel(model);
    throw new RegistryError('UNKNOWN_VERSION', `model ${model} has no version ${version}`, { model, version });
  }

  private requirePromotable(model: string, version: number): VersionRow {
    const row = this.requireVersion(model, version);
    if (row.complete !== 1) {
      const missing = JSON.parse(row.missing_metrics_json) as string[];
      throw new RegistryError(
        'INCOMPLETE',
        `${model} v${version} is incomplete (missing required metrics ${missing.join(', ') || 'unknown'}) and cannot become production`,
        { model, version },
      );
    }
    return row;
  }

  private productionRow(model: string): VersionRow | undefined {
    return this.db.prepare("SELECT * FROM model_versions WHERE model = ? AND stage = 'production'").get(model) as
      | VersionRow
      | undefined;
  }

  private rowByJob(jobId: string): VersionRow | undefined {
    return this.db.prepare('SELECT * FROM model_versions WHERE job_id = ?').get(jobId) as VersionRow | undefined;
  }

  private rowById(id: number): VersionRow {
    return this.db.prepare('SELECT * FROM model_versions WHERE id = ?').get(id) as VersionRow;
  }

  private recordStage(versionId: number, stage: Stage, at: string): void {
    this.db.prepare('INSERT INTO stage_history (version_id, stage, at) VALUES (?, ?, ?)').run(versionId, stage, at);
  }

  private insertDecision(versionId: number, kind: DecisionKind, reason: string, by: string | null, at?: string): void {
    this.db
      .prepare('INSERT INTO decisions (version_id, at, kind, reason, by) VALUES (?, ?, ?, ?, ?)')
      .run(versionId, at ?? new Date().toISOString(), kind, reason, by);
  }

  private hydrate(row: VersionRow): ModelVersion {
    const decisions = this.db
      .prepare('SELECT at, kind, reason, by FROM decisions WHERE version_id = ? ORDER BY id')
      .all(row.id) as DecisionRow[];
    return {
      model: row.model,
      version: row.version,
      jobId: row.job_id,
      runId: row.run_id,
      trainer: row.trainer,
      params: JSON.parse(row.params_json) as Record<string, unknown>,
      datasetFingerprint: row.dataset_fingerprint,
      baseCheckpoint: row.base_checkpoint,
      metrics: JSON.parse(row.metrics_json) as Record<string, number>,
      artifactPath: row.artifact_path,
      checkpointPath: row.checkpoint_path,
      createdAt: row.created_at,
      stage: row.stage,
      complete: row.complete === 1,
      missingMetrics: JSON.parse(row.missing_metrics_json) as string[],
      decisions: decisions.map((d): Decision => ({ at: d.at, kind: d.kind, reason: d.reason, by: d.by })),
    };
  }
}
