/**
 * What every TrainingJob benchmark shares: the config, the instrumented trainer's event records
 * (bench/fixtures/trainer.mjs appends {"t": Date.now(), "event": ...} lines to a file), GPU workers
 * the bench starts and kills, and the markdown row of one figure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { cancelSignal } from '../../src/shared/messages';
import { pidfileFor, readPidfile } from '../../src/supervisor/pidfiles';
import { jobDir, REPO, waitFor, type GpuWorkerProc, type KilnTestEnv } from '../../test/helpers/kiln';
import { ms } from '../report';
import { stats, type Stats } from '../stats';

export const FIXTURE = path.join(REPO, 'bench', 'fixtures', 'trainer.mjs');
export const HEARTBEAT_S = 5;
export const GRACE_S = 5;

export const CONFIG = `version: 1
server:
  address: ""
workers:
  pools:
    gpu: { devices: auto, slots: 4, metricsPort: 0 }
  control: { metricsPort: 0 }
trainers:
  bench:
    command: [node, ${FIXTURE}]
    params:
      steps: { type: integer, min: 1, default: 100 }
      step_ms: { type: integer, min: 0, default: 50 }
      cpu_iters: { type: integer, min: 0, default: 0 }
      checkpoint_every: { type: integer, min: 1, default: 20 }
      ignore_sigterm: { type: boolean, default: false }
models:
  bench:
    trainer: bench
    dataset: synthetic://bench/v1
    pool: gpu
    gpus: 1
timeouts:
  heartbeat: ${HEARTBEAT_S}s
  stall: 5m
  cancelGrace: ${GRACE_S}s
  maxAttempts: 10
`;

/** Effectively endless: the bench cancels these jobs. */
export const LONG = { steps: 1_000_000, step_ms: 50, checkpoint_every: 20 };

/** The figures `--only` picks from, in the order they run. */
export const FIGURES = ['cancel', 'cancel-kill', 'sigkill', 'sigterm', 'overhead', 'memory'];

export interface TrainingBenchOptions {
  runs: number;
  pairs: number;
  jobSeconds: number;
  memoryRuns: number;
  only: string[];
}

/** The raw samples, written by --json. */
export type RawSamples = Record<string, unknown>;

export interface Rec {
  t: number;
  event: 'start' | 'step' | 'checkpoint' | 'sigterm' | 'exit';
  step: number;
  attempt: number;
  pid: number;
  cpu_ms?: number;
}

export function readRecs(file: string): Rec[] {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: Rec[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as Rec);
    } catch {
      /* a line being written */
    }
  }
  return out;
}

export const recFile = (env: KilnTestEnv, jobId: string): string => path.join(jobDir(env, jobId), 'bench-events.jsonl');
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitRec(file: string, pred: (r: Rec) => boolean, timeoutMs: number, what: string): Promise<Rec> {
  return waitFor(() => readRecs(file).find(pred), timeoutMs, what, 10);
}

export class Workers {
  live: GpuWorkerProc[] = [];
  constructor(private readonly env: KilnTestEnv) {}
  async ensure(n: number, slots = 2): Promise<void> {
    this.live = this.live.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
    while (this.live.length < n) this.live.push(await this.env.startGpuWorker({ pool: 'gpu', slots }));
  }
  async stopAll(): Promise<void> {
    for (const w of this.live) w.kill('SIGKILL');
    await Promise.all(this.live.map((w) => w.exited));
    this.live = [];
  }
  /** The worker whose shim runs this job's trainer, from the job's pidfile. */
  owner(jobId: string): GpuWorkerProc | undefined {
    const rec = readPidfile(pidfileFor(this.env.home, jobId));
    return rec ? this.live.find((w) => w.pid === rec.workerPid) : undefined;
  }
}

export async function cancelAndWait(h: WorkflowHandle, timeoutMs = 60_000): Promise<void> {
  await h.signal(cancelSignal, { reason: 'bench' }).catch(() => undefined);
  await Promise.race([h.result().catch(() => undefined), sleep(timeoutMs)]);
}

export const TABLE_HEAD = '| figure | runs | median | p95 | min | max | target | verdict |\n|---|---|---|---|---|---|---|---|';

/** One figure's row; `fmt` writes a cell (durations in ms by default; bench/takeover.ts also counts steps). */
export function statRow(name: string, xs: number[], target: string, met: (s: Stats) => boolean, fmt: (x: number) => string = ms): string {
  if (!xs.length) return `| ${name} | 0 | – | – | – | – | ${target} | no samples |`;
  const s = stats(xs);
  const verdict = target === '–' ? '–' : met(s) ? 'met' : '**not met**';
  return `| ${name} | ${s.n} | ${fmt(s.median)} | ${fmt(s.p95)} | ${fmt(s.min)} | ${fmt(s.max)} | ${target} | ${verdict} |`;
}
