/**
 * The embedded registry: one SQLite file in the state folder, shared by the processes of one host
 * (WAL, busy_timeout). better-sqlite3 is synchronous; calls on one connection are queued so that an
 * async transaction never interleaves with another call on the same connection.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type Database from 'better-sqlite3';
import { SqlModelRegistry, type Driver, type Tx } from './core';
import { openMigrated } from './migrations';

export { MIGRATIONS, SCHEMA_VERSION, type Migration } from './migrations';

class SqliteDriver implements Driver {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly tx: Tx;

  constructor(
    readonly where: string,
    private readonly db: Database.Database,
  ) {
    this.tx = {
      all: async <T>(sql: string, args: unknown[] = []) => db.prepare(sql).all(...args) as T[],
      get: async <T>(sql: string, args: unknown[] = []) => db.prepare(sql).get(...args) as T | undefined,
      run: async (sql: string, args: unknown[] = []) => void db.prepare(sql).run(...args),
      insert: async (sql: string, args: unknown[] = []) => Number(db.prepare(sql).run(...args).lastInsertRowid),
    };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  read<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.serial(() => fn(this.tx));
  }

  write<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.serial(async () => {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const out = await fn(this.tx);
        this.db.exec('COMMIT');
        return out;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      }
    });
  }

  schemaVersion(): Promise<number> {
    return this.serial(async () => Number(this.db.pragma('user_version', { simple: true })));
  }

  close(): Promise<void> {
    return this.serial(async () => {
      if (this.db.open) this.db.close();
    });
  }
}

/** SQLite-backed registry; opening creates the file and brings it up to SCHEMA_VERSION. */
export class SqliteModelRegistry extends SqlModelRegistry {
  readonly dbPath: string;

  constructor(dbPath: string) {
    if (dbPath !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(dbPath)), { recursive: true });
    super(new SqliteDriver(dbPath, openMigrated(dbPath)));
    this.dbPath = dbPath;
  }

}
