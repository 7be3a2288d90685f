/**
 * The registry's schema: an ordered, append-only list of migrations, applied when a database is
 * opened. `user_version` records the step reached; a database newer than this code is refused.
 */
import Database from 'better-sqlite3';
import { RegistryError } from './types';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Ordered; append only. A step's version must be its index + 1. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'versions-and-decisions',
    sql: `
      CREATE TABLE model_versions (
        id                   INTEGER PRIMARY KEY,
        model                TEXT    NOT NULL,
        version              INTEGER NOT NULL CHECK (version >= 1),
        job_id               TEXT    NOT NULL UNIQUE,
        run_id               TEXT    NOT NULL,
        trainer              TEXT    NOT NULL,
        params_json          TEXT    NOT NULL,
        dataset_fingerprint  TEXT    NOT NULL,
        base_checkpoint      TEXT,
        metrics_json         TEXT    NOT NULL,
        artifact_path        TEXT,
        checkpoint_path      TEXT,
        created_at           TEXT    NOT NULL,
        stage                TEXT    NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
        complete             INTEGER NOT NULL CHECK (complete IN (0, 1)),
        missing_metrics_json TEXT    NOT NULL,
        UNIQUE (model, version)
      );
      -- At most one production version per model, enforced by the database.
      CREATE UNIQUE INDEX model_versions_one_production ON model_versions (model) WHERE stage = 'production';
      CREATE TABLE decisions (
        id         INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES model_versions (id),
        at         TEXT    NOT NULL,
        kind       TEXT    NOT NULL CHECK (kind IN ('promoted', 'kept-candidate', 'rejected', 'approved',
                                                    'rollback', 'archived', 'manual-promote')),
        reason     TEXT    NOT NULL,
        by         TEXT
      );
      CREATE INDEX decisions_by_version ON decisions (version_id, id);
    `,
  },
  {
    version: 2,
    name: 'stage-history',
    sql: `
      CREATE TABLE stage_history (
        id         INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES model_versions (id),
        stage      TEXT    NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
        at         TEXT    NOT NULL
      );
      CREATE INDEX stage_history_by_version ON stage_history (version_id, id);
      INSERT INTO stage_history (version_id, stage, at) SELECT id, stage, created_at FROM model_versions ORDER BY id;
    `,
  },
  {
    version: 3,
    name: 'promotion-hooks',
    sql: `
      -- One row per production change (a stage_history row) whose onPromote hook has run.
      CREATE TABLE promotion_hooks (
        change_id  INTEGER PRIMARY KEY REFERENCES stage_history (id),
        model      TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        ran_at     TEXT    NOT NULL,
        ran_by     TEXT    NOT NULL
      );
    `,
  },
  {
    version: 4,
    name: 'stored-artifacts',
    sql: `
      -- What of the job's artifacts folder went to object storage (storage.kind: s3): each entry's name, URI, files' sizes and sha256.
      -- A table of its own (no ALTER of model_versions): a role that did not create the old tables can still migrate.
      CREATE TABLE version_artifacts (
        version_id     INTEGER PRIMARY KEY REFERENCES model_versions (id),
        artifacts_json TEXT    NOT NULL
      );
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

function readUserVersion(db: Database.Database): number {
  return Number(db.pragma('user_version', { simple: true }));
}

function tooNew(found: number, file: string): RegistryError {
  return new RegistryError(
    'SCHEMA_TOO_NEW',
    `model registry ${file} has schema version ${found}, newer than this code supports (${SCHEMA_VERSION}); upgrade Kiln instead of opening it with an older build`,
  );
}

/** Opens (creating) a registry database, brought up to SCHEMA_VERSION. */
export function openMigrated(dbPath: string): Database.Database {
  const db = new Database(dbPath, { timeout: 5000 });
  try {
    db.pragma('busy_timeout = 5000');
    // Checked before anything that writes (journal_mode=WAL persists in the file header).
    const found = readUserVersion(db);
    if (found > SCHEMA_VERSION) throw tooNew(found, dbPath);
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    if (found < SCHEMA_VERSION) migrate(db, dbPath);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: Database.Database, dbPath: string): void {
  db.transaction(() => {
    // Re-read under the write lock: another process may have migrated meanwhile.
    const current = readUserVersion(db);
    if (current > SCHEMA_VERSION) throw tooNew(current, dbPath);
    if (current === SCHEMA_VERSION) return;
    db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`);
    const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      db.exec(m.sql);
      record.run(m.version, m.name, new Date().toISOString());
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}
