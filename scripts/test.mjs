#!/usr/bin/env node
// The whole test suite: node:test files in dist/test (built by `pretest`), then the Python kit's
// pytest suite. Prints one closing line "tests: N passed, N failed".
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const testDir = path.join(root, 'dist', 'test');
const only = process.argv.slice(2);
const files = fs
  .readdirSync(testDir)
  .filter((f) => f.endsWith('.test.js'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort()
  .map((f) => path.join(testDir, f));

// Each test file starts its own dev server. Against one shared server (TEMPORAL_ADDRESS) files run one at
// a time, because GPU task queues (kiln-gpu-<pool>) are shared there.
const concurrency = process.env.KILN_TEST_CONCURRENCY ?? (process.env.TEMPORAL_ADDRESS ? '1' : '2');
const t0 = Date.now();
const node = spawnSync(process.execPath, ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  encoding: 'utf8',
  maxBuffer: 256 * 1024 * 1024,
});
process.stdout.write(node.stdout ?? '');
const num = (re) => Number((node.stdout ?? '').match(re)?.[1] ?? 0);
let passed = num(/ℹ pass (\d+)/);
let failed = num(/ℹ fail (\d+)/) + num(/ℹ cancelled (\d+)/);
if (node.status !== 0 && failed === 0) failed = 1;

if (only.length === 0 || only.includes('python')) {
  const py = spawnSync('python3', ['-m', 'pytest', '-q', 'python/tests'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  process.stdout.write(py.stdout ?? '');
  const m = (py.stdout ?? '').match(/(\d+) passed/);
  const f = (py.stdout ?? '').match(/(\d+) failed/);
  const e = (py.stdout ?? '').match(/(\d+) error/);
  passed += Number(m?.[1] ?? 0);
  failed += Number(f?.[1] ?? 0) + Number(e?.[1] ?? 0);
  if (py.status !== 0 && !f && !e) failed += 1;
}
console.log(`\nsuite took ${((Date.now() - t0) / 1000).toFixed(0)} s`);
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
