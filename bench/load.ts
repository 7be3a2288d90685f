/**
 * Load benchmark (issue 7): 200 short jobs on 2 GPU-pool worker processes with 4 CPU slots each, a
 * control worker process, the real dev server, the example trainer (a few steps per job).
 *
 *   npm run build && node dist/bench/load.js [--jobs 200] [--runs 10] [--workers 2] [--slots 4]
 *                                             [--steps 5] [--json FILE] [--no-write]
 *
 * Per run: every job is submitted at once (16 start calls in flight); the bench records its own clock
 * at each submit and each result, and reads the trainer start from the worker's `=== kiln: attempt N
 * on … at <ISO>` header in trainer.log (same host clock). A sampler reads /proc every 50 ms for live
 * trainer processes (KILN_MODE=train) and the workers' VmRSS. After the run it checks that every job
 * completed exactly once: visibility lists each id once as COMPLETED, the registry holds one version
 * per job id, and each trainer.log has one attempt. The workers stay up across runs (a long-lived
 * deployment), so RSS across runs also shows growth.
 *
 * Writes the "## Reliability and load (issue 7)" section of BENCHMARKS.md (other sections are left as
 * they are), including the chaos recovery figures found in .kiln/chaos/*.json (npm run chaos).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { machine } from '../test/helpers/chaos';
import { defaultConfigYaml, REPO, startKilnEnv, type GpuWorkerProc } from '../test/helpers/kiln';
import { startControlWorkerProcess, type ChildProc } from '../test/helpers/processes';
import { chaosTables, loadTables } from './load/tables';
import { oneRun, type RunResult } from './load/run';
import { ms, writeSection } from './report';
import { median, percentile } from './stats';

const SECTION = '## Reliability and load (issue 7)';

/** One line per run on stderr, and what went wrong in it. */
function logRun(r: RunResult, runs: number): void {
  const run = r.run;
  const st = r.samples.map((s) => s.trainerStartMs ?? NaN).filter(Number.isFinite);
  const dn = r.samples.map((s) => s.completedMs ?? NaN).filter(Number.isFinite);
  console.error(
    `run ${run}/${runs}: ${r.jobs} jobs in ${(r.wallMs / 1000).toFixed(1)} s (${r.jobsPerSec.toFixed(2)} jobs/s); start call p95 ${ms(percentile(r.samples.map((s) => s.startCallMs), 95))}; submit→trainer p50 ${ms(median(st))} p95 ${ms(percentile(st, 95))}; submit→completed p50 ${ms(median(dn))} p95 ${ms(percentile(dn, 95))}; ` +
      `max trainers ${r.maxConcurrentTrainers}/${r.totalSlots}; visibility ${r.visibilityDistinct}; registry ${r.registryVersions}/${r.registryDistinctJobs}; retried ${r.retried}; completed ${r.samples.filter((s) => s.outcome === 'completed').length}`,
  );
  for (const x of r.stragglers) console.error(`  straggler ${x.jobId}: trainer at ${x.trainerStartMs} ms, completed at ${x.completedMs} ms: ${x.why}`);
  const bad = r.samples.filter((s) => s.outcome !== 'completed');
  if (bad.length) console.error(`  not completed: ${bad.slice(0, 5).map((b) => `${b.jobId}: ${b.outcome}`).join('; ')}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      jobs: { type: 'string', default: '200' },
      runs: { type: 'string', default: '10' },
      workers: { type: 'string', default: '2' },
      slots: { type: 'string', default: '4' },
      steps: { type: 'string', default: '5' },
      json: { type: 'string' },
      'from-json': { type: 'string' },
      'no-write': { type: 'boolean', default: false },
    },
  });
  const jobs = Number(values.jobs);
  const runs = Number(values.runs);
  const workers = Number(values.workers);
  const slots = Number(values.slots);
  const steps = Number(values.steps);
  const cmd = `npm run build && node dist/bench/load.js --jobs ${jobs} --runs ${runs} --workers ${workers} --slots ${slots} --steps ${steps}`;
  const date = new Date().toISOString();
  let commit = '(unknown)';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).trim();
  } catch {
    /* not a git checkout */
  }
  if (values['from-json']) {
    // Re-render the section from a saved --json file, without running anything.
    const saved = JSON.parse(fs.readFileSync(values['from-json'], 'utf8')) as { date: string; command: string; commit?: string; runs: RunResult[] };
    const text = [loadTables(saved.runs, saved.command, saved.date, saved.commit ?? '(not recorded)'), '', chaosTables()].join('\n');
    console.log(text);
    if (!values['no-write']) writeSection(path.join(REPO, 'BENCHMARKS.md'), SECTION, text);
    return;
  }

  const env = await startKilnEnv(defaultConfigYaml({ pools: `    gpu: { devices: auto, slots: ${slots}, metricsPort: 0 }` }));
  let control: ChildProc | undefined;
  const gpus: GpuWorkerProc[] = [];
  const stop = () => {
    control?.kill('SIGKILL');
    void env.cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const results: RunResult[] = [];
  try {
    const queue = `kiln-control-load-${process.pid}`;
    control = await startControlWorkerProcess(env, { taskQueue: queue });
    for (let i = 0; i < workers; i++) gpus.push(await env.startGpuWorker({ slots }));
    const procs = [{ name: 'control worker', pid: control.pid }, ...gpus.map((g, i) => ({ name: `GPU worker ${i + 1}`, pid: g.pid }))];
    for (let run = 1; run <= runs; run++) {
      const r = await oneRun(env, run, { jobs, steps, queue, totalSlots: workers * slots, procs });
      results.push(r);
      logRun(r, runs);
    }
  } finally {
    control?.kill('SIGKILL');
    await control?.exited;
    await env.cleanup();
  }
  const body = [loadTables(results, cmd, date, commit), '', chaosTables()].join('\n');
  console.log(body);
  if (!values['no-write']) {
    writeSection(path.join(REPO, 'BENCHMARKS.md'), SECTION, body);
    console.error(`wrote ${SECTION} in ${path.join(REPO, 'BENCHMARKS.md')}`);
  }
  if (values.json) fs.writeFileSync(values.json, JSON.stringify({ date, machine: machine(), command: cmd, commit, runs: results }, null, 1));
  const failed = results.some((r) => r.maxConcurrentTrainers > r.totalSlots || r.samples.some((s) => s.outcome !== 'completed') || r.visibilityDistinct !== r.jobs || r.registryDistinctJobs !== r.jobs || r.registryVersions !== r.jobs);
  if (failed) {
    console.error('load bench: a check failed (see the table)');
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
