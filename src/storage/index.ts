/**
 * Object storage for work that must outlive a host: checkpoints, models, logs, the work-dir lease.
 * `openStore` turns the `storage:` section of temporal.yaml into an ObjectStore.
 */
import * as path from 'node:path';
import type { StorageConfig } from '../config/schema';
import { LocalStore } from './local';
import { S3Store } from './s3';
import type { ObjectStore } from './types';

export * from './errors';
export * from './types';
export { LocalStore } from './local';
export { S3Store, type S3StorageConfig } from './s3';
export * from './checkpoints';
export * from './lease';
export * from './logs';

/** The folder of a `local` store: `storage.path` (relative to the config file), else `<state>/storage`. */
export function localStorageRoot(cfg: Extract<StorageConfig, { kind: 'local' }>, where: { home: string; baseDir: string }): string {
  return cfg.path ? path.resolve(where.baseDir, cfg.path) : path.join(where.home, 'storage');
}

export function openStore(cfg: StorageConfig, where: { home: string; baseDir: string }): ObjectStore {
  return cfg.kind === 's3' ? new S3Store(cfg) : new LocalStore(localStorageRoot(cfg, where));
}

/** The storage config with its secrets replaced by `***`, for logs and `kiln config check`. */
export function redactStorage(cfg: StorageConfig): StorageConfig {
  if (cfg.kind !== 's3') return { ...cfg };
  const mask = (v: string | undefined) => (v ? '***' : undefined);
  return { ...cfg, accessKeyId: mask(cfg.accessKeyId), secretAccessKey: mask(cfg.secretAccessKey), sessionToken: mask(cfg.sessionToken) };
}
