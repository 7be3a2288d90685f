export * from './types';
export * from './promotion';
export * from './sqlite';
export * from './postgres';
export { PG_MIGRATIONS, PG_SCHEMA_VERSION } from './pgMigrations';
export { pinnedBy, pinnedUnder } from './pinned';
