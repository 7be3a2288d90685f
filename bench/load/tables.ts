/** The markdown of the "## Reliability and load (issue 7)" section of BENCHMARKS.md: load runs and chaos figures. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chaosOutDir, machine, type ChaosFile } from '../../test/helpers/chaos';
import { ms } from '../report';
import { median, percentile } from '../stats';
import type { RunResult } from './run';

const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;

export function loadTables(runs: RunResult[], cmd: string, date: string, commit: string): string {
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

export function chaosTables(): string {
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
