/**
 * The shared registry: PostgreSQL (`registry.url: postgres://…` in temporal.yaml), one database that
 * the control worker and the CLI on every host use. Writes hold a transaction-scoped advisory lock
 * (the equivalent of SQLite's BEGIN IMMEDIATE); the unique indexes (job id, model+version, one
 * production per model) are enforced by the database as well.
 */
import { Pool, type PoolClient } from 'pg';
import { SqlModelRegistry, type Driver, type Tx } from './core';
import { PG_MIGRATIONS, PG_SCHEMA_VERSION } from './pgMigrations';
import { RegistryError } from './types';

/** pg_advisory_xact_lock key of registry writes ("kiln" in ASCII, then 1). */
const WRITE_LOCK = 0x6b696c6e01;
/** Key of the lock migrations run under. */
const MIGRATE_LOCK = 0x6b696c6e02;

/** postgres://user:***@host:5432/db: the URL with its password (and any password= parameter) masked. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    for (const k of ['password', 'sslpassword']) if (u.searchParams.has(k)) u.searchParams.set(k, '***');
    return u.toString().replace(/%2A%2A%2A/g, '***');
  } catch {
    return url.replace(/:\/\/([^:/@]*):[^@]*@/, '://$1:***@');
  }
}

function pgCode(err: unknown): string {
  return String((err as { code?: unknown })?.code ?? '');
}

/** A connection or login failure as a RegistryError that names the database and how to fix it. */
export function unavailable(where: string, err: unknown): RegistryError {
  const code = pgCode(err);
  const msg = String((err as Error)?.message ?? err);
  const hint =
    code === '28P01' || code === '28000'
      ? 'the server refused the login: check the user and password in registry.url (use ${PGPASSWORD}-style variables, never a literal) and pg_hba.conf'
      : code === '3D000'
        ? 'the database does not exist: create it (createdb -O <user> <db>) or fix the database name in registry.url'
        : code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'ETIMEDOUT' || /timeout/i.test(msg)
          ? 'nothing answers there: check the host and port in registry.url, that PostgreSQL is running and that this host may reach it'
          : 'check registry.url in temporal.yaml and the server log';
  return new RegistryError('UNAVAILABLE', `cannot use the model registry at ${where}: ${msg}${code ? ` (${code})` : ''}; ${hint}`);
}

function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

function txOn(c: PoolClient | Pool): Tx {
  return {
    all: async <T>(sql: string, args: unknown[] = []) => (await c.query(numbered(sql), args)).rows as T[],
    get: async <T>(sql: string, args: unknown[] = []) => (await c.query(numbered(sql), args)).rows[0] as T | undefined,
    run: async (sql: string, args: unknown[] = []) => void (await c.query(numbered(sql), args)),
    insert: async (sql: string, args: unknown[] = []) => Number((await c.query(`${numbered(sql)} RETURNING id`, args)).rows[0].id),
  };
}

/** Errors that are not the registry's own (SQL errors, lost connections) name the database. */
function named(where: string, err: unknown): unknown {
  if (err instanceof RegistryError) return err;
  const code = pgCode(err);
  if (/^(08|28|3D|57P)/.test(code) || /^E[A-Z]+$/.test(code) || /Connection terminated|timeout/i.test(String((err as Error)?.message))) return unavailable(where, err);
  return err;
}

class PgDriver implements Driver {
  constructor(
    readonly where: string,
    private readonly pool: Pool,
  ) {}

  async read<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    try {
      return await fn(txOn(this.pool));
    } catch (err) {
      throw named(this.where, err);
    }
  }

  async write<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    let c: PoolClient;
    try {
      c = await this.pool.connect();
    } catch (err) {
      throw unavailable(this.where, err);
    }
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1)', [WRITE_LOCK]);
      const out = await fn(txOn(c));
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw named(this.where, err);
    } finally {
      c.release();
    }
  }

  async schemaVersion(): Promise<number> {
    return this.read(async (tx) => readVersion(tx));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

async function readVersion(tx: Tx): Promise<number> {
  const t = await tx.get<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
  if (!t?.t) return 0;
  const r = await tx.get<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
  return Number(r?.v ?? 0);
}

function tooNew(found: number, where: string): RegistryError {
  return new RegistryError(
    'SCHEMA_TOO_NEW',
    `model registry ${where} has schema version ${found}, newer than this code supports (${PG_SCHEMA_VERSION}); upgrade Kiln instead of opening it with an older build`,
  );
}

/** Brings the database up to PG_SCHEMA_VERSION under the migration lock; refuses a newer one untouched. */
async function migrate(pool: Pool, where: string): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATE_LOCK]);
    const tx = txOn(c);
    const current = await readVersion(tx);
    if (current > PG_SCHEMA_VERSION) throw tooNew(current, where);
    if (current < PG_SCHEMA_VERSION) {
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
      for (const m of PG_MIGRATIONS) {
        if (m.version <= current) continue;
        await c.query(m.sql);
        await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, new Date().toISOString()]);
      }
    }
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

/** The schema version of the database at `url` (0: no schema yet), without creating or migrating anything. */
export async function inspectPostgres(url: string, o: PostgresOptions = {}): Promise<{ where: string; schemaVersion: number; supported: number }> {
  const where = redactUrl(url);
  const pool = new Pool({ connectionString: url, max: 1, connectionTimeoutMillis: o.connectTimeoutMs ?? 5000 });
  pool.on('error', () => undefined);
  try {
    return { where, schemaVersion: await readVersion(txOn(pool)), supported: PG_SCHEMA_VERSION };
  } catch (err) {
    throw named(where, err);
  } finally {
    await pool.end().catch(() => undefined);
  }
}

export interface PostgresOptions {
  /** Connection timeout; default 5 s. */
  connectTimeoutMs?: number;
  /** Pool size; default 4. */
  max?: number;
}

/** A registry on PostgreSQL; opening connects, migrates, and fails with a RegistryError naming the cause. */
export class PostgresModelRegistry extends SqlModelRegistry {
  static async open(url: string, o: PostgresOptions = {}): Promise<PostgresModelRegistry> {
    const where = redactUrl(url);
    const pool = new Pool({ connectionString: url, max: o.max ?? 4, connectionTimeoutMillis: o.connectTimeoutMs ?? 5000 });
    // An idle connection the server drops must not crash the process; the next query reconnects.
    pool.on('error', () => undefined);
    try {
      await migrate(pool, where);
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw named(where, err);
    }
    return new PostgresModelRegistry(new PgDriver(where, pool));
  }
}
