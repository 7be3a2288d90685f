/**
 * `kiln doctor` checks of what outlives a host: object storage (a probe object written, read,
 * conditionally overwritten and deleted) and the model registry (reachable, schema version). Neither
 * creates anything that stays: the probe object is deleted, the registry is only read.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import type { KilnConfig } from '../config/load';
import { inspectPostgres } from '../registry/postgres';
import { SCHEMA_VERSION } from '../registry/migrations';
import { registryPath } from '../registry/open';
import { RegistryError } from '../registry/types';
import { openStore, StorageUnavailable } from '../storage';
import type { Check } from './doctorCheck';

const errText = (err: unknown) => String((err as Error)?.message ?? err).split('\n')[0]!;

const STORAGE_HINTS: Record<string, string> = {
  unreachable: 'check storage.endpoint (and region) in temporal.yaml and that this host can reach it',
  credentials: 'check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or storage.accessKeyId / secretAccessKey from ${VARS})',
  denied: 'grant these credentials s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket',
  bucket: 'create the bucket (aws s3 mb s3://<bucket>, mc mb …) or fix storage.bucket / storage.region',
  conditional: 'use a store that honours If-None-Match / If-Match on PutObject (AWS S3, a recent MinIO, Cloudflare R2): the lease fencing stale attempts needs it',
};

export async function checkStorage(config: KilnConfig): Promise<Check> {
  const title = 'object storage usable';
  let uri: string = config.storage.kind;
  try {
    const store = openStore(config.storage, { home: config.home, baseDir: config.baseDir });
    uri = store.uri;
    const r = await store.probe();
    return { id: 'storage', title, status: 'ok', detail: `${r.uri}: probe object written, read back, conditional writes refused as they must be, deleted (${r.ms} ms)` };
  } catch (err) {
    const reason = err instanceof StorageUnavailable ? err.reason : null;
    return {
      id: 'storage',
      title,
      status: 'fail',
      detail: errText(err),
      hint: reason ? STORAGE_HINTS[reason] : config.storage.kind === 'local' ? `make ${uri} writable or set storage.path in ${path.basename(config.file)}` : 'check the storage: section of temporal.yaml',
    };
  }
}

function sqliteCheck(config: KilnConfig): Check {
  const title = 'model registry';
  const file = registryPath(config);
  if (!fs.existsSync(file)) {
    return { id: 'registry', title, status: 'ok', detail: `SQLite ${file}: not created yet (the first registered version creates it); one host only — set registry.url to share it` };
  }
  try {
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      const v = Number(db.pragma('user_version', { simple: true }));
      return versionCheck(`SQLite ${file}`, v, SCHEMA_VERSION);
    } finally {
      db.close();
    }
  } catch (err) {
    return { id: 'registry', title, status: 'fail', detail: `SQLite ${file}: ${errText(err)}`, hint: `make ${file} readable, or move a damaged file aside (the next registered version starts a new registry)` };
  }
}

function versionCheck(where: string, found: number, supported: number): Check {
  const title = 'model registry';
  if (found > supported) {
    return { id: 'registry', title, status: 'fail', detail: `${where}: schema version ${found}, newer than this Kiln supports (${supported})`, hint: 'upgrade Kiln on this host to the version the other hosts run' };
  }
  if (found < supported) {
    return { id: 'registry', title, status: 'warn', detail: `${where}: schema version ${found}${found === 0 ? ' (empty)' : ''}, this Kiln uses ${supported}`, hint: 'the control worker migrates it when it starts (kiln worker control)' };
  }
  return { id: 'registry', title, status: 'ok', detail: `${where}: schema version ${found}` };
}

export async function checkRegistry(config: KilnConfig, o: { connectTimeoutMs?: number } = {}): Promise<Check> {
  if (!config.registry.url) return sqliteCheck(config);
  try {
    const r = await inspectPostgres(config.registry.url, { connectTimeoutMs: o.connectTimeoutMs });
    return versionCheck(`PostgreSQL ${r.where}`, r.schemaVersion, r.supported);
  } catch (err) {
    const msg = errText(err);
    const [detail, hint] = err instanceof RegistryError && err.code === 'UNAVAILABLE' ? splitHint(msg) : [msg, 'check registry.url in temporal.yaml'];
    return { id: 'registry', title: 'model registry', status: 'fail', detail, hint };
  }
}

/** "cannot use … (28P01); the server refused …" → the failure and its fix. */
function splitHint(msg: string): [string, string] {
  const i = msg.lastIndexOf('; ');
  return i > 0 ? [msg.slice(0, i), msg.slice(i + 2)] : [msg, 'check registry.url in temporal.yaml'];
}
