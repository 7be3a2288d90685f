/**
 * Retraining-schedule benchmarks (issue 4), on a real dev server with real worker and trainer processes:
 * - schedule fire → trainer process started (p50/p95 over ≥ 10 fires that train);
 * - storm: 100 concurrent triggers (manual RetrainModel starts + schedule triggers) for one data
 *   version → TrainingJob runs started, counted through visibility (target exactly 1).
 *
 *   node dist/bench/schedules.js [--fires N] [--warmup N] [--storms N] [--storm-size N] [--no-write] [--json FILE]
 *
 * Times: the schedule's nominal fire time (recentActions.scheduledAt, jitter included), the RetrainModel
 * run's start time (describe), the TrainingJob child's start time, and the trainer's start from the
 * `=== kiln: attempt 1 on … at <ISO>` header the train activity writes to trainer.log just before it
 * spawns the trainer. Same host clock for all but the server's, which runs on this host too.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { RetrainResult } from '../src/shared/retrain';
import { scheduleId, trainingIdFor } from '../src/shared/retrain';
import { syncSchedules, triggerSchedule } from '../src/client/schedules';
import { startRetrain } from '../src/client/retrain';
import { resolveDatasetVersion } from '../src/datasets';
import { defaultConfigYaml, jobDir, REPO, startKilnEnv, waitFor, type KilnTestEnv } from '../test/helpers/kiln';
import { ms, writeSection } from './report';
import { loadavg as load, p50, stats, type Stats } from './stats';

const SECTION = '## Schedules (issue 4)';
const EVERY_S = 3;

const CONFIG = defaultConfigYaml({
  models: `  bench:
    trainer: example
    dataset: data/bench.txt
    params: { epochs: 1, steps_per_epoch: 3 }
    pool: gpu
    gpus: 1
    requiredMetrics: [val_loss, accuracy]
    promotion: { metric: val_loss, direction: min, mode: auto }
    retrain: { schedule: "@every ${EVERY_S}s", catchupWindow: 10s }`,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Start time of attempt 1 from the trainer.log header. */
function trainerStartedAt(env: KilnTestEnv, jobId: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(jobDir(env, jobId), 'trainer.log'), 'utf8');
  } catch {
    return null;
  }
  const m = /=== kiln: attempt 1 on \S+ at (\S+?)[,;]/.exec(text);
  return m ? Date.parse(m[1]!) : null;
}

function writeData(env: KilnTestEnv, text: string): Promise<string> {
  fs.mkdirSync(path.join(env.home, 'data'), { recursive: true });
  fs.writeFileSync(path.join(env.home, 'data', 'bench.txt'), text);
  return resolveDatasetVersion(env.config, 'data/bench.txt').then((v) => v.fingerprint);
}

interface FireSample {
  retrainId: string;
  childId: string;
  scheduledAt: number;
  takenAt: number;
  workflowStart: number;
  childStart: number;
  trainerStart: number;
}

/** Lets the schedule fire on its own; after each training, new data so the next fire trains again. */
async function benchFires(env: KilnTestEnv, fires: number, warmup: number): Promise<FireSample[]> {
  const sched = env.client.schedule.getHandle(scheduleId('bench'));
  const seen = new Set<string>();
  const out: FireSample[] = [];
  let version = 1;
  await writeData(env, `bench v${version}\n`);
  await sched.unpause('bench: fires');
  const deadline = Date.now() + fires * 30_000 + 60_000;
  let warm = 0;
  while (out.length < fires && Date.now() < deadline) {
    const d = await sched.describe();
    for (const a of d.info.recentActions) {
      const id = a.action.workflow.workflowId;
      if (seen.has(id)) continue;
      seen.add(id);
      const h = env.client.workflow.getHandle(id);
      const r = (await h.result()) as RetrainResult;
      if (r.outcome !== 'trained' || !r.childId) {
        console.error(`  fire ${id}: ${r.outcome} (${r.reason})`);
        continue;
      }
      const trainerStart = trainerStartedAt(env, r.childId);
      const wf = await h.describe();
      const child = await env.client.workflow.getHandle(r.childId).describe();
      if (trainerStart === null) throw new Error(`no trainer.log header for ${r.childId}`);
      if (warm < warmup) {
        warm += 1;
        console.error(`  warm-up fire ${id} (not a sample): workflow start → trainer ${ms(trainerStart - wf.startTime.getTime())}`);
        version += 1;
        await writeData(env, `bench v${version}\n`);
        continue;
      }
      const s: FireSample = {
        retrainId: id,
        childId: r.childId,
        scheduledAt: a.scheduledAt.getTime(),
        takenAt: a.takenAt.getTime(),
        workflowStart: wf.startTime.getTime(),
        childStart: child.startTime.getTime(),
        trainerStart,
      };
      out.push(s);
      console.error(
        `  fire ${out.length}/${fires} ${id}: workflow start → trainer ${ms(s.trainerStart - s.workflowStart)}, nominal fire → trainer ${ms(s.trainerStart - s.scheduledAt)}`,
      );
      version += 1;
      await writeData(env, `bench v${version}\n`);
    }
    await sleep(200);
  }
  await sched.pause('bench: fires done');
  if (out.length < fires) throw new Error(`only ${out.length} of ${fires} fires trained before the deadline`);
  return out;
}

interface StormSample {
  triggers: number;
  manual: number;
  scheduleTriggers: number;
  retrainRuns: number;
  trainingRuns: number;
  outcomes: Record<string, number>;
  settleMs: number;
}

async function countRuns(env: KilnTestEnv, query: string): Promise<number> {
  let n = 0;
  for await (const _ of env.client.workflow.list({ query })) n++;
  return n;
}

/** Count once visibility stopped changing for 1.5 s. */
async function settledCount(env: KilnTestEnv, query: string): Promise<number> {
  let last = -1;
  let stable = 0;
  for (let i = 0; i < 120 && stable < 3; i++) {
    const n = await countRuns(env, query);
    stable = n === last ? stable + 1 : 0;
    last = n;
    await sleep(500);
  }
  return last;
}

async function benchStorm(env: KilnTestEnv, round: number, size: number): Promise<StormSample> {
  const fp = await writeData(env, `bench storm ${round} ${Date.now()}\n`);
  const childId = trainingIdFor('bench', fp);
  const manual = Math.ceil(size / 2);
  const scheduleTriggers = size - manual;
  const t0 = Date.now();
  const startedRetrains = await Promise.all([
    ...Array.from({ length: manual }, () => startRetrain(env.client, env.config, 'bench', { taskQueue: env.controlQueue }).then((h) => h.workflowId)),
    ...Array.from({ length: scheduleTriggers }, () => triggerSchedule(env.client, 'bench').then(() => null)),
  ]);
  const outcomes: Record<string, number> = {};
  for (const id of startedRetrains) {
    if (!id) continue;
    const r = (await env.client.workflow.getHandle(id).result()) as RetrainResult;
    outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
  }
  const sched = env.client.schedule.getHandle(scheduleId('bench'));
  await waitFor(async () => (await sched.describe()).info.runningActions.length === 0, 120_000, 'scheduled runs to finish');
  await waitFor(async () => (await env.client.workflow.getHandle(childId).describe()).status.name !== 'RUNNING', 120_000, 'the training to finish');
  const settleMs = Date.now() - t0;
  const trainingRuns = await settledCount(env, `WorkflowType = "TrainingJob" AND WorkflowId = "${childId}"`);
  const retrainRuns = await settledCount(env, `WorkflowType = "RetrainModel" AND KilnModel = "bench" AND StartTime >= "${new Date(t0 - 1000).toISOString()}"`);
  const s = { triggers: size, manual, scheduleTriggers, retrainRuns, trainingRuns, outcomes, settleMs };
  console.error(`  storm ${round}: ${size} triggers → ${retrainRuns} RetrainModel runs, ${trainingRuns} TrainingJob run(s) of ${childId}; manual outcomes ${JSON.stringify(outcomes)}`);
  return s;
}

/** Replaces this benchmark's section of BENCHMARKS.md, leaving other sections as they are. */
async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      fires: { type: 'string', default: '12' },
      warmup: { type: 'string', default: '1' },
      storms: { type: 'string', default: '3' },
      'storm-size': { type: 'string', default: '100' },
      'no-write': { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  });
  const fires = Number(values.fires);
  const warmup = Number(values.warmup);
  const storms = Number(values.storms);
  const size = Number(values['storm-size']);
  const date = new Date().toISOString();
  const loadBefore = load();

  const env = await startKilnEnv(CONFIG);
  let fireSamples: FireSample[] = [];
  const stormSamples: StormSample[] = [];
  try {
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    await writeData(env, 'bench v0\n');
    await syncSchedules(env.client, env.config, { taskQueue: env.controlQueue });
    await env.client.schedule.getHandle(scheduleId('bench')).pause('bench: setup');
    console.error(`fires: @every ${EVERY_S}s, ${warmup} warm-up + ${fires} fires that train`);
    fireSamples = await benchFires(env, fires, warmup);
    console.error(`storms: ${storms} × ${size} triggers`);
    for (let i = 1; i <= storms; i++) stormSamples.push(await benchStorm(env, i, size));
  } finally {
    await env.client.schedule.getHandle(scheduleId('bench')).pause('bench: done').catch(() => undefined);
    await env.cleanup();
  }

  const row = (name: string, xs: number[], target: string, ok: (s: Stats) => boolean | null) => {
    const s = stats(xs, p50);
    const verdict = ok(s);
    return `| ${name} | ${s.n} | ${ms(s.median)} | ${ms(s.p95)} | ${ms(s.min)} | ${ms(s.max)} | ${target} | ${verdict === null ? '–' : verdict ? 'met' : '**not met**'} |`;
  };
  const cpu = os.cpus();
  const md: string[] = [];
  md.push(`Run ${date} on ${cpu.length} × ${cpu[0]?.model ?? 'cpu'} (the 2-core polyglot VM), Node ${process.version}, load before ${loadBefore}, after ${load()}.`);
  md.push(`Command: \`npm run build && node dist/bench/schedules.js --fires ${fires} --warmup ${warmup} --storms ${storms} --storm-size ${size}\`. Real dev server (createLocal), in-process control worker, GPU worker as a child process (2 CPU slots), example trainer (1 epoch × 3 steps).\n`);
  md.push(`Schedule fire → trainer started: schedule \`@every ${EVERY_S}s\`, overlap SKIP; after each training the bench changes the dataset file, so the next fire that finds the previous run closed trains again (fires during a training are skipped by the overlap policy and are not samples). The first ${warmup} training fire(s) after the workers start are warm-up, not samples.\n`);
  md.push('| figure | fires | median | p95 | min | max | target | verdict |\n|---|---|---|---|---|---|---|---|');
  md.push(row('RetrainModel start → trainer process started', fireSamples.map((s) => s.trainerStart - s.workflowStart), 'p95 < 500 ms', (s) => s.p95 < 500));
  md.push(row('nominal fire time → trainer process started', fireSamples.map((s) => s.trainerStart - s.scheduledAt), '–', () => null));
  md.push(row('  of which: nominal fire → RetrainModel start', fireSamples.map((s) => s.workflowStart - s.scheduledAt), '–', () => null));
  md.push(row('  of which: RetrainModel start → TrainingJob start (need-check)', fireSamples.map((s) => s.childStart - s.workflowStart), '–', () => null));
  md.push(row('  of which: TrainingJob start → trainer started', fireSamples.map((s) => s.trainerStart - s.childStart), '–', () => null));
  md.push('');
  md.push(`Storm: ${size} concurrent triggers per round for one new data version (${Math.ceil(size / 2)} \`kiln train\`-equivalent RetrainModel starts + ${size - Math.ceil(size / 2)} \`schedule.trigger\` with overlap SKIP), TrainingJob runs counted through visibility after it settled. The schedule is paused during the storms (a trigger still fires a paused schedule); "RetrainModel runs" is the ${Math.ceil(size / 2)} manual runs plus the triggered runs the overlap policy let through: SKIP drops a trigger only while an earlier scheduled run is still running, and a deduped run ends within ~100 ms.\n`);
  md.push('| round | triggers | RetrainModel runs | TrainingJob runs (target 1) | manual outcomes | all settled after |\n|---|---|---|---|---|---|');
  stormSamples.forEach((s, i) =>
    md.push(`| ${i + 1} | ${s.triggers} | ${s.retrainRuns} | ${s.trainingRuns}${s.trainingRuns === 1 ? '' : ' **not met**'} | ${Object.entries(s.outcomes).map(([k, v]) => `${k} ${v}`).join(', ')} | ${ms(s.settleMs)} |`),
  );
  const body = md.join('\n');
  console.log(`${SECTION}\n\n${body}`);
  if (!values['no-write']) {
    writeSection(path.join(REPO, 'BENCHMARKS.md'), SECTION, body);
    console.error(`wrote ${SECTION} in ${path.join(REPO, 'BENCHMARKS.md')}`);
  }
  if (values.json) fs.writeFileSync(values.json, JSON.stringify({ date, fires: fireSamples, storms: stormSamples }, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
