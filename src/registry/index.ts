export * from './types';
export * from './promotion';
export * from './sqlite';
