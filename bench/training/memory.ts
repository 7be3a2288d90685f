/** Activity worker memory: GPU worker (and each shim's) VmRSS and USS with 0, 1, 2, 4 running jobs. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { pidDir, readPidfile } from '../../src/supervisor/pidfiles';
import type { GpuWorkerProc, KilnTestEnv } from '../../test/helpers/kiln';
import { loadavg as load, rssKiB, stats, ussKiB } from '../stats';
import { cancelAndWait, LONG, recFile, sleep, waitRec, type RawSamples, type Workers } from './harness';

interface MemoryPoint {
  jobs: number;
  workerKiB: number;
  workerUssKiB: number;
  shimKiB: number[];
  shimUssKiB: number[];
}

/** Median of 5 samples over 1 s. */
async function sample(pid: number): Promise<{ rss: number; uss: number }> {
  const rss: number[] = [];
  const uss: number[] = [];
  for (let i = 0; i < 5; i++) {
    rss.push(rssKiB(pid) ?? NaN);
    uss.push(ussKiB(pid) ?? NaN);
    await sleep(200);
  }
  return { rss: stats(rss).median, uss: stats(uss).median };
}

/** Shims of this worker's running jobs, from the pid files. */
function shimPids(env: KilnTestEnv, workerPid: number): number[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(pidDir(env.home));
  } catch {
    /* no trainer started yet */
  }
  return names
    .map((n) => readPidfile(path.join(pidDir(env.home), n)))
    .filter((p) => p && p.workerPid === workerPid)
    .map((p) => p!.shimPid);
}

async function point(env: KilnTestEnv, w: GpuWorkerProc, jobs: number): Promise<MemoryPoint> {
  const m = await sample(w.pid);
  const shims = shimPids(env, w.pid);
  return { jobs, workerKiB: m.rss, workerUssKiB: m.uss, shimKiB: shims.map((p) => rssKiB(p) ?? NaN), shimUssKiB: shims.map((p) => ussKiB(p) ?? NaN) };
}

/** GPU worker RSS (and each shim's) with 0, 1, 2, 4 running jobs on a fresh 4-slot worker. */
async function benchMemory(env: KilnTestEnv, workers: Workers, runs: number): Promise<MemoryPoint[][]> {
  const series: MemoryPoint[][] = [];
  for (let r = 0; r < runs; r++) {
    await workers.stopAll();
    await workers.ensure(1, 4);
    const w = workers.live[0]!;
    await sleep(3000);
    const points: MemoryPoint[] = [await point(env, w, 0)];
    const handles: WorkflowHandle[] = [];
    for (const target of [1, 2, 4]) {
      while (handles.length < target) {
        const h = await env.submit('bench', { params: LONG });
        handles.push(h);
      }
      for (const h of handles) await waitRec(recFile(env, h.workflowId), (x) => x.event === 'checkpoint', 30_000, 'job running');
      await sleep(3000);
      const p = await point(env, w, target);
      if (p.shimKiB.length !== target) throw new Error(`expected ${target} shims of worker ${w.pid}, found ${p.shimKiB.length}`);
      points.push(p);
    }
    series.push(points);
    console.error(
      `  memory run ${r + 1}/${runs}: worker RSS ${points.map((p) => `${p.jobs} jobs ${(p.workerKiB / 1024).toFixed(1)} MiB`).join(', ')}; shims RSS ${points[3]!.shimKiB.map((k) => (k / 1024).toFixed(1)).join(', ')} MiB, USS ${points[3]!.shimUssKiB.map((k) => (k / 1024).toFixed(1)).join(', ')} MiB (load ${load()})`,
    );
    await Promise.all(handles.map((h) => cancelAndWait(h)));
  }
  return series;
}

/** The memory table (figure memory); samples go to json.memory. */
export async function memoryTable(env: KilnTestEnv, workers: Workers, runs: number, json: RawSamples): Promise<string[]> {
  const md: string[] = [];
  const series = await benchMemory(env, workers, runs);
  json.memory = series;
  const mib = (k: number) => `${(k / 1024).toFixed(1)} MiB`;
  md.push(`Memory: median over ${series.length} fresh 4-slot GPU workers; trainers sleep between steps (50 ms), so this is Kiln's cost, not the trainer's.\n`);
  md.push('| running jobs | worker VmRSS | Δ vs 0 jobs | Δ per job | worker USS | shim VmRSS each | shim USS each |\n|---|---|---|---|---|---|---|');
  const base = stats(series.map((s) => s[0]!.workerKiB)).median;
  for (let i = 0; i < series[0]!.length; i++) {
    const n = series[0]![i]!.jobs;
    const rss = stats(series.map((s) => s[i]!.workerKiB)).median;
    const uss = stats(series.map((s) => s[i]!.workerUssKiB)).median;
    const shimRss = series.flatMap((s) => s[i]!.shimKiB);
    const shimUss = series.flatMap((s) => s[i]!.shimUssKiB);
    md.push(
      `| ${n} | ${mib(rss)} | ${mib(rss - base)} | ${n ? mib((rss - base) / n) : '–'} | ${mib(uss)} | ${shimRss.length ? mib(stats(shimRss).median) : '–'} | ${shimUss.length ? mib(stats(shimUss).median) : '–'} |`,
    );
  }
  md.push('');
  return md;
}
