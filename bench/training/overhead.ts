/**
 * Supervision overhead: the same CPU-bound trainer run bare (spawned directly with the Kiln
 * environment) and as a Kiln job, in alternating order, with the CPU of everything else on the machine.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { KilnTestEnv } from '../../test/helpers/kiln';
import { ms } from '../report';
import { childrenOf, cpuMsOf, loadavg as load, machineBusyMs, stats } from '../stats';
import { FIXTURE, readRecs, recFile, type RawSamples, type Rec, type TrainingBenchOptions, type Workers } from './harness';
import { trainerEnv } from '../../src/supervisor/protocol';
import { trainerLogFile } from '../../src/supervisor/workdir';

interface OverheadPair {
  order: string;
  bareMs: number;
  kilnMs: number;
  ratio: number;
  bareCpuMs: number;
  kilnCpuMs: number;
  /** CPU the GPU worker process spent over the whole job (train + heartbeats + signals). */
  workerCpuMs: number;
  /** CPU of GPU worker + dev server + control worker over each run: what supervision costs besides the trainer. */
  bareSideCpuMs: number;
  kilnSideCpuMs: number;
  /** CPU of other processes on the machine during each run, % of one core. */
  bareForeignPct: number;
  kilnForeignPct: number;
  load: string;
}

interface Span {
  wallMs: number;
  /** The trainer's own CPU from its first to its last step. */
  cpuMs: number;
  /** The trainer's CPU over its whole life (startup included), at exit. */
  totalCpuMs: number;
}

type Measured<T extends Span> = T & { sideCpuMs: number; foreignPct: number };

function trainSpan(recs: Rec[]): Span {
  const steps = recs.filter((r) => r.event === 'step');
  if (steps.length < 2) throw new Error(`expected a first and a last step record, got ${JSON.stringify(recs)}`);
  const last = steps[steps.length - 1]!;
  const exit = recs.find((r) => r.event === 'exit');
  return { wallMs: last.t - steps[0]!.t, cpuMs: (last.cpu_ms ?? 0) - (steps[0]!.cpu_ms ?? 0), totalCpuMs: exit?.cpu_ms ?? last.cpu_ms ?? 0 };
}

/** The same trainer spawned directly, with Kiln's environment and a plain reader on fd 3. */
async function bareRun(params: Record<string, unknown>): Promise<Span> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-bare-'));
  const file = path.join(dir, 'bench-events.jsonl');
  const log = fs.openSync(trainerLogFile(dir), 'a');
  const child = spawn(process.execPath, [FIXTURE], {
    cwd: dir,
    env: {
      ...trainerEnv({ mode: 'train', jobId: 'bare', attempt: 1, params, workDir: dir, resumeFrom: '', gpuIds: [] }),
      KILN_BENCH_EVENTS: file,
    },
    stdio: ['pipe', log, log, 'pipe'],
    // Own session, as the shim gives the trainer under Kiln: with the kernel's sched autogroup a
    // session is a scheduling group, and the bare trainer must not share one with the bench's workers.
    detached: true,
  });
  fs.closeSync(log);
  let lines = 0;
  const events = child.stdio[3] as NodeJS.ReadableStream;
  events.on('data', (chunk: Buffer) => {
    for (const b of chunk) if (b === 10) lines += 1;
  });
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  if (code !== 0) throw new Error(`bare trainer exited ${code}: ${fs.readFileSync(path.join(dir, 'trainer.log'), 'utf8')}`);
  if (lines === 0) throw new Error('bare trainer wrote no events');
  const span = trainSpan(readRecs(file));
  fs.rmSync(dir, { recursive: true, force: true });
  return span;
}

/** The dev server process this bench started (a child of this process). */
function serverPid(): number | null {
  return (
    childrenOf(process.pid).find((k) => {
      try {
        return fs.readFileSync(`/proc/${k}/cmdline`, 'utf8').includes('start-dev');
      } catch {
        return false;
      }
    }) ?? null
  );
}

/** CPU ms of everything Kiln runs besides the trainer: GPU worker, dev server, and this process (control worker). */
function kilnSideCpuMs(workerPid: number): number {
  const srv = serverPid();
  const self = process.cpuUsage();
  return cpuMsOf(workerPid) + (srv ? cpuMsOf(srv) : 0) + (self.user + self.system) / 1000;
}

async function kilnRun(env: KilnTestEnv, workerPid: number, params: Record<string, unknown>): Promise<Span & { workerCpuMs: number }> {
  const cpu0 = cpuMsOf(workerPid);
  const h = await env.submit('bench', { params });
  await h.result();
  const workerCpuMs = cpuMsOf(workerPid) - cpu0;
  return { ...trainSpan(readRecs(recFile(env, h.workflowId))), workerCpuMs };
}

/**
 * Other tenants of this VM: machine busy CPU minus ours (trainer, worker, server, this process), as a
 * share of one core over the run. A pair with a high share measured the neighbours, not Kiln.
 */
async function measured<T extends Span>(workerPid: number, run: () => Promise<T>): Promise<Measured<T>> {
  const side0 = kilnSideCpuMs(workerPid);
  const busy0 = machineBusyMs();
  const t0 = Date.now();
  const r = await run();
  const sideCpuMs = kilnSideCpuMs(workerPid) - side0;
  const foreign = machineBusyMs() - busy0 - sideCpuMs - r.totalCpuMs;
  return { ...r, sideCpuMs, foreignPct: (100 * Math.max(0, foreign)) / (Date.now() - t0) };
}

async function onePair(env: KilnTestEnv, workerPid: number, params: Record<string, unknown>, bareFirst: boolean): Promise<OverheadPair> {
  const l = load();
  let bare: Measured<Span>;
  let kiln: Measured<Span & { workerCpuMs: number }>;
  if (bareFirst) {
    bare = await measured(workerPid, () => bareRun(params));
    kiln = await measured(workerPid, () => kilnRun(env, workerPid, params));
  } else {
    kiln = await measured(workerPid, () => kilnRun(env, workerPid, params));
    bare = await measured(workerPid, () => bareRun(params));
  }
  return {
    order: bareFirst ? 'bare, Kiln' : 'Kiln, bare',
    bareMs: bare.wallMs,
    kilnMs: kiln.wallMs,
    ratio: kiln.wallMs / bare.wallMs,
    bareCpuMs: bare.cpuMs,
    kilnCpuMs: kiln.cpuMs,
    workerCpuMs: kiln.workerCpuMs,
    bareSideCpuMs: bare.sideCpuMs,
    kilnSideCpuMs: kiln.sideCpuMs,
    bareForeignPct: bare.foreignPct,
    kilnForeignPct: kiln.foreignPct,
    load: l,
  };
}

async function benchOverhead(env: KilnTestEnv, workers: Workers, pairs: number, jobSeconds: number): Promise<{ steps: number; cpuIters: number; pairs: OverheadPair[] }> {
  await workers.stopAll();
  await workers.ensure(1);
  // Calibrate a CPU-bound step of ~25 ms, then size the job to jobSeconds of bare training. By the
  // trainer's CPU time, not wall time: a busy neighbour during the probe must not shorten every run.
  const cpuIters = 800_000;
  const probe = await bareRun({ steps: 200, cpu_iters: cpuIters, checkpoint_every: 100 });
  const perStep = Math.max(probe.cpuMs, 1) / 199;
  const steps = Math.ceil((jobSeconds * 1000) / perStep);
  const params = { steps, cpu_iters: cpuIters, checkpoint_every: 100 };
  console.error(`  overhead: ${perStep.toFixed(1)} ms CPU/step bare (${(probe.wallMs / 199).toFixed(1)} ms wall), ${steps} steps per run`);
  const out: OverheadPair[] = [];
  for (let i = 0; i < pairs; i++) {
    const p = await onePair(env, workers.live[0]!.pid, params, i % 2 === 0);
    out.push(p);
    console.error(
      `  overhead pair ${i + 1}/${pairs} (${p.order}): bare ${ms(p.bareMs)}, Kiln ${ms(p.kilnMs)}, ratio ${p.ratio.toFixed(4)} (trainer CPU ${ms(p.bareCpuMs)} / ${ms(p.kilnCpuMs)}; worker CPU ${ms(p.workerCpuMs)}; worker+server+control CPU bare ${ms(p.bareSideCpuMs)} / Kiln ${ms(p.kilnSideCpuMs)}; other tenants ${p.bareForeignPct.toFixed(0)} % / ${p.kilnForeignPct.toFixed(0)} % of a core; load ${p.load} → ${load()})`,
    );
  }
  return { steps, cpuIters, pairs: out };
}

/** The overhead table and verdict (figure overhead); samples go to json.overhead. */
export async function overheadTable(env: KilnTestEnv, workers: Workers, o: TrainingBenchOptions, json: RawSamples): Promise<string[]> {
  const md: string[] = [];
  const r = await benchOverhead(env, workers, o.pairs, o.jobSeconds);
  json.overhead = r;
  const med = stats(r.pairs.map((p) => p.ratio)).median;
  md.push(`Overhead: CPU-bound trainer, ${r.steps} steps × ${r.cpuIters} iterations, progress event every step, checkpoint every 100 steps.\n`);
  md.push(
    '| pair | order | bare | under Kiln | ratio | trainer CPU bare / Kiln | GPU worker CPU in Kiln run | worker+server+control CPU bare / Kiln | other tenants bare / Kiln (% of a core) | load avg at start |\n|---|---|---|---|---|---|---|---|---|---|',
  );
  r.pairs.forEach((p, i) =>
    md.push(
      `| ${i + 1} | ${p.order} | ${ms(p.bareMs)} | ${ms(p.kilnMs)} | ${p.ratio.toFixed(4)} | ${ms(p.bareCpuMs)} / ${ms(p.kilnCpuMs)} | ${ms(p.workerCpuMs)} (${((100 * p.workerCpuMs) / p.kilnCpuMs).toFixed(1)} % of trainer CPU) | ${ms(p.bareSideCpuMs)} / ${ms(p.kilnSideCpuMs)} | ${p.bareForeignPct.toFixed(0)} / ${p.kilnForeignPct.toFixed(0)} | ${p.load} |`,
    ),
  );
  const quiet = r.pairs.filter((p) => p.bareForeignPct < 10 && p.kilnForeignPct < 10);
  md.push(
    `\nPairs where other tenants used < 10 % of a core in both runs: ${quiet.length}/${r.pairs.length}${quiet.length ? `, median ratio ${stats(quiet.map((p) => p.ratio)).median.toFixed(4)} (${quiet.map((p) => p.ratio.toFixed(4)).join(', ')})` : ''}.`,
  );
  const extra = r.pairs.map((p) => (p.kilnSideCpuMs - p.bareSideCpuMs) / p.kilnCpuMs);
  md.push(
    `\nSupervision CPU besides the trainer (GPU worker + dev server + control worker, Kiln run minus bare run) per second of trainer CPU: median ${(1000 * stats(extra).median).toFixed(0)} ms/s (${r.pairs.map((_, i) => (1000 * extra[i]!).toFixed(0)).join(', ')}).`,
  );
  if (quiet.length >= 3) {
    const q = stats(quiet.map((p) => p.ratio)).median;
    md.push(`\nMedian ratio over quiet pairs **${q.toFixed(4)}** (target ≤ 1.01: ${q <= 1.01 ? 'met' : '**not met**'}); all pairs ${med.toFixed(4)}.\n`);
  } else {
    md.push(`\nMedian ratio over all pairs ${med.toFixed(4)}; target ≤ 1.01 **not determined**: fewer than 3 pairs ran without neighbour load.\n`);
  }
  return md;
}
