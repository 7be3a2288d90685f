/** Where the registry lives for a config (SQLite in the state folder, or registry.url), and opening it. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import { PostgresModelRegistry, redactUrl } from './postgres';
import { SqliteModelRegistry } from './sqlite';
import type { ModelRegistry } from './types';

export function registryPath(config: KilnConfig): string {
  return path.join(config.home, 'registry.sqlite');
}

/** Where the registry is, for messages: the SQLite file, or the PostgreSQL URL with its password masked. */
export function registryWhere(config: KilnConfig): string {
  return config.registry.url ? redactUrl(config.registry.url) : registryPath(config);
}

export function isSharedRegistry(config: KilnConfig): boolean {
  return Boolean(config.registry.url);
}

/**
 * Opens (creating, migrating) the configured registry. `ifExists`: for readers, null instead of
 * creating an empty SQLite file (a PostgreSQL registry always opens).
 */
export async function openRegistry(config: KilnConfig, o: { ifExists?: boolean; connectTimeoutMs?: number } = {}): Promise<ModelRegistry | null> {
  if (config.registry.url) return PostgresModelRegistry.open(config.registry.url, { connectTimeoutMs: o.connectTimeoutMs });
  const file = registryPath(config);
  if (o.ifExists && !fs.existsSync(file)) return null;
  return new SqliteModelRegistry(file);
}

/** Opened on first call, so a worker that never registers never creates the file; a failed open is retried next call. */
export function lazyRegistry(config: KilnConfig): () => Promise<ModelRegistry> {
  let reg: Promise<ModelRegistry> | undefined;
  return () => {
    reg ??= openRegistry(config).then((r) => r!);
    reg.catch(() => (reg = undefined));
    return reg;
  };
}
