#!/usr/bin/env node
// The whole test suite: node:test files in dist/test (built by `pretest`), then the Python kit's
// pytest suite. Output streams as it comes; the last line is "tests: N passed, N failed".
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
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

/** Runs a command, streaming its stdout through while keeping a copy to count results. */
function run(cmd, args) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      process.stdout.write(d);
    });
    child.on('close', (status) => resolve({ status, out }));
  });
}

// Each test file starts its own dev server. Against one shared server (TEMPORAL_ADDRESS) files run one
// at a time, because GPU task queues (kiln-gpu-<pool>) are shared there.
const concurrency = process.env.KILN_TEST_CONCURRENCY ?? (process.env.TEMPORAL_ADDRESS ? '1' : '2');
const t0 = Date.now();
let passed = 0;
let failed = 0;
if (files.length) {
  const node = await run(process.execPath, ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files]);
  const num = (re) => Number(node.out.match(re)?.[1] ?? 0);
  passed += num(/ℹ pass (\d+)/);
  failed += num(/ℹ fail (\d+)/) + num(/ℹ cancelled (\d+)/);
  if (node.status !== 0 && failed === 0) failed = 1;
}
/** Runs pytest with `python` and adds its counts. */
async function pytest(python, args) {
  // -B and no cacheprovider: pytest writes no __pycache__/ or .pytest_cache/ into python/.
  const py = await run(python, ['-B', '-m', 'pytest', '-q', '-p', 'no:cacheprovider', ...args]);
  const count = (re) => Number(py.out.match(re)?.[1] ?? 0);
  passed += count(/(\d+) passed/);
  const pyFailed = count(/(\d+) failed/) + count(/(\d+) errors?/);
  failed += pyFailed || (py.status !== 0 ? 1 : 0);
}
if (only.length === 0 || only.includes('python')) await pytest('python3', ['python/tests']);
// The real-library tests (python/tests/frameworks) need torch & co: they run with the venv .ci/run
// installs from python/requirements-frameworks.txt, when it is there (under system python they skip).
const venvPython = path.join(process.env.KILN_FRAMEWORKS_VENV ?? path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'kiln', 'frameworks-venv'), 'bin', 'python');
if (only.length === 0 || only.includes('python') || only.includes('frameworks')) {
  if (fs.existsSync(venvPython)) await pytest(venvPython, ['python/tests/frameworks']);
  else console.log(`frameworks: no venv at ${venvPython} (bash .ci/run installs it): real-library tests not run`);
}
console.log(`\nsuite took ${((Date.now() - t0) / 1000).toFixed(0)} s`);
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
