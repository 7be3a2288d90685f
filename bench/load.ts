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
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { submitJob } from '../src/client/jobs';
import { buildSpec } from '../src/config/spec';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { chaosOutDir, machine, parseAttemptHeaders, type ChaosFile } from '../test/helpers/chaos';
import { defaultConfigYaml, jobDir, REPO, startKilnEnv, type GpuWorkerProc, type KilnTestEnv } from '../test/helpers/kiln';
import { jobProcesses, median, percentile, rssKiB, startControlWorkerProcess, type ChildProc } from '../test/helpers/processes';
import { writeSection } from './report';

const SECTION = '## Reliability and load (issue 7)';

interface JobSample {
  jobId: string;
  submitAt: number;
  /** The start call: submit → the server accepted the workflow. */
  startCallMs: number;
  trainerStartMs: number | null;
  completedMs: number | null;
  outcome: string;
  attempts: number;
}

interface RunResult {
  run: number;
  jobs: number;
  wallMs: number;
  jobsPerSec: number;
  samples: JobSample[];
  maxConcurrentTrainers: number;
  totalSlots: number;
  visibilityCompleted: number;
  visibilityDistinct: number;
  registryVersions: number;
  registryDistinctJobs: number;
  retried: number;
  /** The slowest jobs, when far slower than the rest: what their histories say. */
  stragglers: Array<{ jobId: string; completedMs: number; trainerStartMs: number | null; why: string }>;
  rssKiB: Record<string, { start: number; max: number; end: number }>;
  loadavg: number[];
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

async function oneRun(env: KilnTestEnv, run: number, o: { jobs: number; steps: number; queue: string; totalSlots: number; procs: Array<{ name: string; pid: number }> }): Promise<RunResult> {
  const prefix = `load-${Date.now().toString(36)}-r${run}`;
  const ids = Array.from({ length: o.jobs }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);
  const spec = buildSpec(env.config, 'spirals', { params: { epochs: 1, steps_per_epoch: o.steps, checkpoint_every: o.steps, step_delay_ms: 0 } });

  const rss: RunResult['rssKiB'] = {};
  for (const p of o.procs) {
    const v = rssKiB(p.pid) ?? 0;
    rss[p.name] = { start: v, max: v, end: v };
  }
  let maxTrainers = 0;
  const sampler = setInterval(() => {
    const n = jobProcesses(env.home).filter((p) => p.mode === 'train').length;
    if (n > maxTrainers) maxTrainers = n;
    for (const p of o.procs) {
      const v = rssKiB(p.pid);
      if (v !== null) {
        rss[p.name]!.max = Math.max(rss[p.name]!.max, v);
        rss[p.name]!.end = v;
      }
    }
  }, 50);

  const submitAt = new Map<string, number>();
  const acceptedAt = new Map<string, number>();
  const doneAt = new Map<string, number>();
  const outcome = new Map<string, string>();
  const results: Array<Promise<void>> = [];
  const t0 = Date.now();
  await pool(ids, 16, async (id) => {
    submitAt.set(id, Date.now());
    const h: WorkflowHandle = await submitJob(env.client, env.config, spec, { jobId: id, taskQueue: o.queue });
    acceptedAt.set(id, Date.now());
    results.push(
      h.result().then(
        (s: { outcome?: string }) => {
          doneAt.set(id, Date.now());
          outcome.set(id, s?.outcome ?? '?');
        },
        (err: unknown) => {
          doneAt.set(id, Date.now());
          outcome.set(id, `failed: ${String(err).slice(0, 200)}`);
        },
      ),
    );
  });
  await Promise.all(results);
  const wallMs = Math.max(...doneAt.values()) - t0;
  clearInterval(sampler);

  const samples: JobSample[] = ids.map((id) => {
    let log = '';
    try {
      log = fs.readFileSync(path.join(jobDir(env, id), 'trainer.log'), 'utf8');
    } catch {
      /* no trainer ran */
    }
    const heads = parseAttemptHeaders(log);
    const sub = submitAt.get(id)!;
    return {
      jobId: id,
      submitAt: sub,
      startCallMs: acceptedAt.get(id)! - sub,
      trainerStartMs: heads[0] ? heads[0].at - sub : null,
      completedMs: doneAt.has(id) ? doneAt.get(id)! - sub : null,
      outcome: outcome.get(id) ?? 'lost',
      attempts: heads.length,
    };
  });

  // Visibility is eventually consistent: poll until it has settled on every id.
  let visible: Array<{ id: string; status: string }> = [];
  for (let i = 0; i < 50; i++) {
    visible = [];
    for await (const w of env.client.workflow.list({ query: `WorkflowType = "TrainingJob" AND ExecutionStatus = "Completed"` })) {
      if (w.workflowId.startsWith(`${prefix}-`)) visible.push({ id: w.workflowId, status: w.status.name });
    }
    if (visible.length >= o.jobs) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const doneMs = samples.map((x) => x.completedMs ?? Infinity);
  const slowLimit = 1.5 * percentile(doneMs.filter(Number.isFinite), 90);
  const stragglers: RunResult['stragglers'] = [];
  for (const x of [...samples].sort((a, b) => (b.completedMs ?? Infinity) - (a.completedMs ?? Infinity)).slice(0, 5)) {
    if ((x.completedMs ?? Infinity) <= slowLimit) break;
    stragglers.push({ jobId: x.jobId, completedMs: x.completedMs ?? NaN, trainerStartMs: x.trainerStartMs, why: await diagnose(env, x.jobId) });
  }

  const reg = new SqliteModelRegistry(path.join(env.home, 'registry.sqlite'));
  const versions = reg.list().filter((v) => v.jobId.startsWith(`${prefix}-`));
  reg.close();

  return {
    run,
    jobs: o.jobs,
    wallMs,
    jobsPerSec: o.jobs / (wallMs / 1000),
    samples,
    maxConcurrentTrainers: maxTrainers,
    totalSlots: o.totalSlots,
    visibilityCompleted: visible.length,
    visibilityDistinct: new Set(visible.map((v) => v.id)).size,
    registryVersions: versions.length,
    registryDistinctJobs: new Set(versions.map((v) => v.jobId)).size,
    retried: samples.filter((s) => s.attempts > 1).length,
    stragglers,
    rssKiB: rss,
    loadavg: os.loadavg(),
  };
}

// temporal.api.enums.v1.TimeoutType
const TIMEOUT_TYPES: Record<number, string> = { 1: 'start-to-close', 2: 'schedule-to-start', 3: 'schedule-to-close', 4: 'heartbeat' };

/** Retries and timeouts in a job's history, e.g. "prepareJob attempt 2 after: activity StartToClose timeout". */
async function diagnose(env: KilnTestEnv, jobId: string): Promise<string> {
  try {
    const events = (await env.client.workflow.getHandle(jobId).fetchHistory()).events ?? [];
    const typeOf = new Map<string, string>();
    const out: string[] = [];
    let wfTaskTimeouts = 0;
    for (const e of events) {
      const id = String(e.eventId);
      if (e.activityTaskScheduledEventAttributes) typeOf.set(id, e.activityTaskScheduledEventAttributes.activityType?.name ?? '?');
      const st = e.activityTaskStartedEventAttributes;
      if (st && (st.attempt ?? 1) > 1) {
        const f = st.lastFailure;
        const t = f?.timeoutFailureInfo?.timeoutType;
        out.push(`${typeOf.get(String(st.scheduledEventId)) ?? '?'} attempt ${st.attempt} after ${t ? `a ${TIMEOUT_TYPES[Number(t)] ?? String(t)} timeout` : (f?.message ?? '?').slice(0, 80)}`);
      }
      if (e.workflowTaskTimedOutEventAttributes) wfTaskTimeouts += 1;
    }
    if (wfTaskTimeouts) out.push(`${wfTaskTimeouts} workflow task timeout(s)`);
    return out.join('; ') || 'no retry or timeout in history (slow, not lost)';
  } catch (err) {
    return `history unavailable: ${String(err).slice(0, 80)}`;
  }
}

const ms = (v: number) => `${Math.round(v)} ms`;
const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;

function loadTables(runs: RunResult[], cmd: string, date: string, commit: string): string {
  const all = runs.flatMap((r) => r.samples);
  const call = all.map((s) => s.startCallMs);
  const start = all.map((s) => s.trainerStartMs).filter((v): v is number => v !== null);
  const done = all.map((s) => s.completedMs).filter((v): v is number => v !== null);
  const perRun = (f: (r: RunResult) => number) => runs.map(f);
  const p95Call = perRun((r) => percentile(r.samples.map((s) => s.startCallMs), 95));
  const p95Start = perRun((r) => percentile(r.samples.map((s) => s.trainerStartMs ?? NaN).filter(Number.isFinite), 95));
  const p95Done = perRun((r) => percentile(r.samples.map((s) => s.completedMs ?? NaN).filter(Number.isFinite), 95));
  const jps = perRun((r) => r.jobsPerSec);
  const lines: string[] = [];
  const r0 = runs[0]!;
  lines.push(`### Load: ${r0.jobs} jobs × ${runs.length} runs`);
  lines.push('');
  lines.push(`Run ${date} on ${machine()} (the 2-core VM, shared with other engineers' test runs: 1-minute load average after each run ${runs.map((r) => r.loadavg[0]!.toFixed(1)).join(', ')}).`);
  lines.push(`Command: \`${cmd}\` at commit ${commit}. Real dev server (createLocal), a control worker process, ${Object.keys(r0.rssKiB).length - 1} GPU-pool worker processes with ${r0.totalSlots / (Object.keys(r0.rssKiB).length - 1)} CPU slots each (${r0.totalSlots} slots), the example trainer with a few steps per job and its evaluate command on the control worker; all jobs submitted at once per run, workers kept up across runs.`);
  lines.push('');
  lines.push('Latencies are per job, pooled over all runs; "per-run p95" is the spread of each run\'s own p95. Each run submits all its jobs at once, so most of submit → trainer started is queueing for a slot: 200 jobs on 8 slots.');
  lines.push('');
  lines.push('| figure | samples | median | p95 | max | per-run p95 (min – max) |');
  lines.push('|---|---|---|---|---|---|');
  lines.push(`| submit → start call accepted by the server | ${call.length} | ${ms(median(call))} | ${ms(percentile(call, 95))} | ${ms(Math.max(...call))} | ${ms(Math.min(...p95Call))} – ${ms(Math.max(...p95Call))} |`);
  lines.push(`| submit → trainer started | ${start.length} | ${ms(median(start))} | ${ms(percentile(start, 95))} | ${ms(Math.max(...start))} | ${ms(Math.min(...p95Start))} – ${ms(Math.max(...p95Start))} |`);
  lines.push(`| submit → completed (result) | ${done.length} | ${ms(median(done))} | ${ms(percentile(done, 95))} | ${ms(Math.max(...done))} | ${ms(Math.min(...p95Done))} – ${ms(Math.max(...p95Done))} |`);
  lines.push('');
  lines.push('| figure | median over runs | min | max |');
  lines.push('|---|---|---|---|');
  lines.push(`| jobs/s end to end (first submit → last result) | ${median(jps).toFixed(2)} | ${Math.min(...jps).toFixed(2)} | ${Math.max(...jps).toFixed(2)} |`);
  lines.push(`| run wall time | ${ms(median(perRun((r) => r.wallMs)))} | ${ms(Math.min(...perRun((r) => r.wallMs)))} | ${ms(Math.max(...perRun((r) => r.wallMs)))} |`);
  lines.push('');
  lines.push('| check, every run | result |');
  lines.push('|---|---|');
  const maxT = Math.max(...perRun((r) => r.maxConcurrentTrainers));
  lines.push(`| max concurrent trainers (/proc every 50 ms) vs ${r0.totalSlots} slots | ${maxT} (per run: ${perRun((r) => r.maxConcurrentTrainers).join(', ')}) — ${maxT <= r0.totalSlots ? 'never above the slots' : 'ABOVE THE SLOTS'} |`);
  const ok = (f: (r: RunResult) => boolean) => runs.every(f);
  lines.push(`| completed (result), every job | ${ok((r) => r.samples.every((s) => s.outcome === 'completed')) ? `${r0.jobs}/${r0.jobs} in every run` : perRun((r) => r.samples.filter((s) => s.outcome === 'completed').length).join(', ')} |`);
  lines.push(`| visibility: distinct COMPLETED ids per run | ${perRun((r) => r.visibilityDistinct).join(', ')} (listed rows: ${perRun((r) => r.visibilityCompleted).join(', ')}) |`);
  lines.push(`| registry: versions / distinct job ids per run | ${runs.map((r) => `${r.registryVersions}/${r.registryDistinctJobs}`).join(', ')} |`);
  lines.push(`| jobs whose training ran more than once | ${perRun((r) => r.retried).join(', ')} |`);
  lines.push('');
  const slow = runs.flatMap((r) => r.stragglers.map((x) => ({ run: r.run, ...x })));
  if (slow.length) {
    lines.push('Stragglers: jobs more than 1.5 × their run\'s p90 of submit → completed, and what their histories show.');
    lines.push('');
    lines.push('| run | job | submit → trainer started | submit → completed | history |');
    lines.push('|---|---|---|---|---|');
    for (const x of slow) lines.push(`| ${x.run} | ${x.jobId} | ${x.trainerStartMs === null ? '–' : ms(x.trainerStartMs)} | ${ms(x.completedMs)} | ${x.why} |`);
    lines.push('');
  }
  const notes: string[] = [];
  if (maxT < r0.totalSlots) {
    notes.push(`Concurrent trainers never reached the ${r0.totalSlots} slots: with jobs this short, the 2 CPUs (starting a trainer and an evaluate process per job, the server, three workers) are the bottleneck, not the slots.`);
  }
  if (slow.length && slow.every((x) => /(prepareJob|registerVersion|evaluate|resolveApproval) attempt \d+ after a start-to-close timeout/.test(x.why))) {
    notes.push(
      `Every straggler is a control activity that was recorded as started but whose completion never reached the server (the overloaded dev server logged "context deadline exceeded" on workflow updates during these runs), retried only when its start-to-close timeout ran out. They set most runs' wall time, and so the jobs/s figure; without them a run ends about when the last regular job does. ` +
        'Control activities carry no heartbeat timeout, so a lost one waits out its whole start-to-close timeout, the same wait a control worker killed mid-activity costs (docs/reliability.md).',
    );
  }
  if (notes.length) {
    lines.push(...notes.flatMap((n) => [n, '']));
  }
  lines.push('| worker RSS (VmRSS) | before run 1 | max, any run | after the last run |');
  lines.push('|---|---|---|---|');
  for (const name of Object.keys(r0.rssKiB)) {
    const maxAll = Math.max(...runs.map((r) => r.rssKiB[name]!.max));
    lines.push(`| ${name} | ${mib(r0.rssKiB[name]!.start)} | ${mib(maxAll)} | ${mib(runs[runs.length - 1]!.rssKiB[name]!.end)} |`);
  }
  lines.push('');
  lines.push(`The control worker hosts the workflows: with ${r0.jobs} jobs open at once its RSS peaks with the workflow cache and falls back as they close.`);
  return lines.join('\n');
}

function chaosTables(): string {
  const dir = chaosOutDir();
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort() : [];
  if (!files.length) return '';
  const lines: string[] = ['### Recovery under repeated faults (`npm run chaos`)', ''];
  const label: Record<string, string> = {
    sigkill: 'SIGKILL of the owning GPU worker, one job per run',
    sigterm: 'SIGTERM (drain) of the owning GPU worker, one job per run',
    consecutive: 'one job through consecutive faults (SIGKILL / SIGTERM alternating)',
    'server-restart': 'dev server SIGTERMed and restarted (same port and SQLite file) under one job',
  };
  const col: Record<string, string> = {
    recoveryMs: 'fault → next attempt\'s trainer started',
    completedMs: 'fault → job result',
    lostSteps: 'steps lost (stopped at − resumed from; checkpoint every 5)',
    stopMs: 'server SIGTERM → exited',
    startMs: 'server spawn → answering',
    progressMs: 'server answering → job progress advances',
  };
  for (const f of files) {
    const c = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as ChaosFile<Record<string, unknown>>;
    lines.push(`**${label[c.fault] ?? c.fault}**: ${c.n} runs, ${c.date}, ${c.machine}. Command: \`${c.command}\`.`);
    lines.push('');
    lines.push('| figure | runs | median | p95 | min | max |');
    lines.push('|---|---|---|---|---|---|');
    for (const [k, v] of Object.entries(c.summary)) {
      if (!col[k]) continue;
      const fmt = k.endsWith('Ms') ? ms : (x: number) => String(x);
      lines.push(`| ${col[k]} | ${v.n} | ${fmt(v.median)} | ${fmt(v.p95)} | ${fmt(v.min)} | ${fmt(v.max)} |`);
    }
    lines.push('');
  }
  return lines.join('\n');
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
