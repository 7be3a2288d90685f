/** Where the registry lives for a config, and a registry opened on first use. */
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import { SqliteModelRegistry } from './sqlite';
import type { ModelRegistry } from './types';

export function registryPath(config: KilnConfig): string {
  return path.join(config.home, 'registry.sqlite');
}

/** Opened on first call, so a worker that never registers never creates the file. */
export function lazyRegistry(config: KilnConfig): () => ModelRegistry {
  let reg: ModelRegistry | undefined;
  return () => (reg ??= new SqliteModelRegistry(registryPath(config)));
}
