// Lint: mainly the workflow sandbox boundary. Workflow code is replayed deterministically, so nothing
// Node-only (fs, child_process, pino, the registry's SQLite) may reach the workflow bundle.
import tseslint from 'typescript-eslint';

const nodeOnly = ['fs', 'path', 'os', 'crypto', 'child_process', 'net', 'http', 'https', 'stream', 'worker_threads'];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'python/**', '.kiln/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
    },
  },
  {
    files: ['workflows/**/*.ts', 'src/job.ts', 'src/defs.ts', 'src/duration.ts', 'src/names.ts', 'src/params.ts', 'src/errors.ts', 'src/searchAttributes.ts', 'src/cron.ts', 'src/registry/promotion.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [...nodeOnly.flatMap((m) => [m, `node:${m}`]), 'pino', 'better-sqlite3', '@temporalio/worker', '@temporalio/client', '@temporalio/activity'].map((name) => ({
            name,
            message: 'workflow code must stay deterministic and sandbox-safe: no Node-only modules',
          })),
          patterns: [
            { group: ['**/activities', '**/activities/*'], allowTypeImports: true, message: 'import activities only as types' },
            { group: ['**/src/registry', '**/src/registry/index', '**/src/registry/sqlite', '**/src/logger', '**/src/config/load', '**/src/jobs', '**/src/supervisor/*', '**/src/temporal/*'], message: 'Node-only module: not allowed in workflow code' },
          ],
        },
      ],
      'no-restricted-syntax': [
        'error',
        { selector: "MemberExpression[object.name='Math'][property.name='random']", message: 'use uuid4() or pass randomness in as input' },
      ],
    },
  },
);
