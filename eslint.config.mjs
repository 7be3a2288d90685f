// Lint: mainly the workflow sandbox boundary. Workflow code is replayed deterministically, so nothing
// Node-only (fs, child_process, pino, the registry's SQLite) may reach the workflow bundle.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'python/**', '.kiln/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
    },
  },
  // Small functions and files in the product code (issue 11): a function over 80 lines or a file over
  // 400 is split, not waved through.
  {
    files: ['src/**/*.ts', 'activities/**/*.ts', 'workflows/**/*.ts', 'workers/**/*.ts', 'bench/**/*.ts', 'examples/**/*.mjs'],
    rules: {
      'max-lines-per-function': ['error', { max: 80, skipBlankLines: true, skipComments: true }],
      'max-lines': ['error', { max: 400, skipBlankLines: true, skipComments: true }],
    },
  },
  // The workflow sandbox, fenced by folder: workflows/ and src/shared/ may import only the workflow
  // SDK, @temporalio/common, zod, src/shared, and activities as types. A new file in either folder is
  // covered without touching this list.
  ...[
    { files: ['workflows/**/*.ts'], allowed: String.raw`^(@temporalio/(workflow|common)|zod|\./[\w.-]+|\.\./src/shared/[\w.-]+)$` },
    { files: ['src/shared/**/*.ts'], allowed: String.raw`^(@temporalio/(workflow|common)|zod|\./[\w.-]+)$` },
  ].map(({ files, allowed }) => ({
    files,
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['**/activities', '**/activities/*'], allowTypeImports: true, message: 'import activities only as types' },
            {
              regex: `^(?!${allowed.slice(1, -1)}$)(?!\\.\\./activities$)`,
              message: 'workflow code must stay deterministic and sandbox-safe: only @temporalio/workflow, @temporalio/common, zod and src/shared',
            },
          ],
        },
      ],
      'no-restricted-syntax': [
        'error',
        { selector: "MemberExpression[object.name='Math'][property.name='random']", message: 'use uuid4() or pass randomness in as input' },
      ],
    },
  })),
);
