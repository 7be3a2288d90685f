/**
 * Takeover benchmarks (issue 16): how fast, and with how many steps redone, a job goes on after its
 * GPU worker dies, on a real dev server with real `kiln dev`, worker, shim and trainer processes. The
 * trainer is bench/fixtures/trainer.mjs (follows the trainer contract: checkpoints on SIGTERM; appends
 * timestamped start/step/checkpoint/sigterm/exit records, so every time is read on the host clock).
 *
 *   node dist/bench/takeover.js [--runs 10] [--interruptions 100] [--steps-per-fault 80] [--only restart,host-gone,interruptions] [--json FILE]
 *
 * restart        `kiln dev` (against the bench's dev server) runs the GPU worker; the bench SIGKILLs it
 *                and `kiln dev` restarts it (each kill after the worker ran healthy, so with the initial
 *                restart delay); the restarted worker fails the dead attempt by its task token. These
 *                jobs get a 30 s heartbeat timeout, so nothing else can start the retry in seconds.
 *                Figures: kill → first resumed step (target ≤ 3 s); steps lost = the step the old
 *                trainer stopped at (its exit record) − the step the next attempt resumed from (target 0).
 * host-gone      two GPU workers; the owner is SIGKILLed and never restarted; the other takes over
 *                after the heartbeat timeout (the worker-loss run of bench/training/latency.ts).
 * interruptions  one job, N faults of its owner alternating SIGKILL/SIGTERM, each once the running
 *                attempt has a checkpoint beyond its resume point that the workflow knows of; a
 *                replacement worker starts at once (as a supervisor would); default timeouts.maxAttempts.
 *                The job has N × --steps-per-fault + 200 steps (25 ms each): it must outlast the faults.
 *                Figures: fault → first resumed step; the job completes; the summary's count.
 *
 * Prints a markdown section for BENCHMARKS.md (machine, date, commit, command, load average before
 * and after) on stdout, progress on stderr; writes nothing into BENCHMARKS.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { submitJob } from '../src/client/jobs';
import { buildSpec } from '../src/config/spec';
import { INITIAL_RESTART_DELAY_MS, HEALTHY_AFTER_MS } from '../src/dev/backoff';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { pidfileFor, readPidfile } from '../src/supervisor/pidfiles';
import { machine } from '../test/helpers/chaos';
import { KILN_BIN, REPO, startKilnEnv, waitFor, type KilnTestEnv } from '../test/helpers/kiln';
import { loadavg as load, stats } from './stats';
import { cancelAndWait, CONFIG as TRAINING_CONFIG, GRACE_S, HEARTBEAT_S, LONG, readRecs, recFile, sleep, statRow, TABLE_HEAD, waitRec, Workers, type RawSamples, type Rec } from './training/harness';
import { benchWorkerLoss } from './training/latency';

const FIGURES = ['restart', 'host-gone', 'interruptions'];
/** The training bench's config with the default timeouts.maxAttempts (5): interruptions must not use it up. */
const CONFIG = TRAINING_CONFIG.replace(/^ {2}maxAttempts: \d+\n/m, '');
const RESTART_HEARTBEAT = '30s';
const TOKEN_MSG = 'failed the attempt of a dead worker so that it is retried at once';

interface Options {
  runs: number;
  interruptions: number;
  /** Steps the interrupted job gets per fault (+ 200): it must not finish before the last fault. */
  stepsPerFault: number;
  only: string[];
  json?: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: { runs: { type: 'string', default: '10' }, interruptions: { type: 'string', default: '100' }, 'steps-per-fault': { type: 'string', default: '80' }, only: { type: 'string' }, json: { type: 'string' } },
  });
  const int = (v: string | undefined, flag: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  const only = values.only ? values.only.split(',') : FIGURES;
  for (const o of only) if (!FIGURES.includes(o)) throw new Error(`--only ${o}: unknown figure (one of ${FIGURES.join(', ')})`);
  return { runs: int(values.runs, 'runs'), interruptions: int(values.interruptions, 'interruptions'), stepsPerFault: int(values['steps-per-fault'], 'steps-per-fault'), only, json: values.json };
}

// ---------------------------------------------------------------------------------------------
// kiln dev, against the bench's server

interface KilnDev {
  child: ChildProcess;
  /** Its JSON log lines (its workers' included: they inherit its stdout). */
  lines(): Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

async function startKilnDev(env: KilnTestEnv): Promise<KilnDev> {
  const out = path.join(env.home, 'kiln-dev.out');
  const fd = fs.openSync(out, 'a');
  const child = spawn(process.execPath, [KILN_BIN, '--config', env.configFile, 'dev'], {
    env: { ...process.env, KILN_CONFIG: env.configFile, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address, KILN_LOG_PRETTY: '0', KILN_LOG_LEVEL: 'info' },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const text = () => fs.readFileSync(out, 'utf8');
  const dev: KilnDev = {
    child,
    lines: () =>
      text()
        .split('\n')
        .flatMap((l) => {
          try {
            return l.startsWith('{') ? [JSON.parse(l) as Record<string, unknown>] : [];
          } catch {
            return [];
          }
        }),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await Promise.race([exited, sleep(GRACE_S * 1000 + 30_000)]);
      child.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await waitFor(() => text().includes('Kiln is running') && dev.lines().filter((l) => l.msg === 'worker started').length >= 2, 120_000, 'kiln dev and its two workers');
  } catch (err) {
    await dev.stop();
    throw new Error(`${(err as Error).message}\n${text().slice(-4000)}`);
  }
  return dev;
}

// ---------------------------------------------------------------------------------------------
// restart: worker SIGKILL, kiln dev restarts it on the same host

interface RestartSample {
  /** kill → the first step of the next attempt (the figure). */
  firstStep: number;
  /** kill → the restarted worker failed the dead attempt by task token; null when it did not. */
  failedByToken: number | null;
  /** kill → the restarted worker's first log line (its process is up), and → it polls ("worker started"). */
  workerUp: number | null;
  polling: number | null;
  /** kill → the next attempt's trainer started. */
  started: number;
  /** The delay kiln dev logged before restarting the worker. */
  restartDelay: number | null;
  resumedFrom: number;
  /** The step the old trainer stopped at (its exit record; else its last record). */
  stoppedAt: number;
  stepsLost: number;
  sigtermSeen: boolean;
}

const startOf = (file: string, attempt: number): Rec | undefined => readRecs(file).find((r) => r.event === 'start' && r.attempt === attempt);

/** What the old trainer did after its worker died, and what the next attempt resumed from. */
function lossOf(file: string, oldPid: number, resumedFrom: number): Pick<RestartSample, 'stoppedAt' | 'stepsLost' | 'sigtermSeen'> {
  const mine = readRecs(file).filter((r) => r.pid === oldPid);
  const exit = mine.find((r) => r.event === 'exit');
  const stoppedAt = exit ? exit.step : Math.max(...mine.map((r) => r.step));
  return { stoppedAt, stepsLost: Math.max(0, stoppedAt - resumedFrom), sigtermSeen: mine.some((r) => r.event === 'sigterm') };
}

async function benchRestart(env: KilnTestEnv, dev: KilnDev, runs: number): Promise<RestartSample[]> {
  const out: RestartSample[] = [];
  let lastKill = 0;
  for (let i = 0; i < runs; i++) {
    const spec = buildSpec(env.config, 'bench', { params: LONG, timeouts: { heartbeat: RESTART_HEARTBEAT } });
    const h = await submitJob(env.client, env.config, spec);
    const file = recFile(env, h.workflowId);
    await waitRec(file, (r) => r.event === 'checkpoint', 60_000, 'a first checkpoint');
    await sleep(1000 + Math.random() * 1000);
    // A worker killed before it ran HEALTHY_AFTER_MS would be restarted with a longer backoff.
    await sleep(Math.max(0, lastKill + INITIAL_RESTART_DELAY_MS + HEALTHY_AFTER_MS + 1000 - Date.now()));
    const rec = await waitFor(() => readPidfile(pidfileFor(env.home, h.workflowId)), 10_000, 'the pid file of the trainer');
    const oldPid = startOf(file, 1)!.pid;
    const t0 = Date.now();
    process.kill(rec.workerPid, 'SIGKILL');
    lastKill = t0;
    const first = await waitRec(file, (r) => r.event === 'step' && r.attempt >= 2, 90_000, 'the first step after the worker SIGKILL');
    const started = startOf(file, first.attempt)!;
    if (first.step !== started.step + 1) throw new Error(`resumed from ${started.step} but the first step was ${first.step}`);
    const logs = dev.lines();
    const token = logs.find((l) => l.msg === TOKEN_MSG && l.jobId === h.workflowId);
    const died = logs.find((l) => l.msg === 'worker died; restarting' && Number(l.time) >= t0);
    const polls = logs.find((l) => l.msg === 'worker started' && Number(l.time) >= t0 && l.pid !== rec.workerPid);
    const up = polls && logs.find((l) => l.pid === polls.pid);
    const since = (l: Record<string, unknown> | undefined) => (l ? Number(l.time) - t0 : null);
    const s: RestartSample = {
      firstStep: first.t - t0,
      failedByToken: since(token),
      workerUp: since(up),
      polling: since(polls),
      started: started.t - t0,
      restartDelay: died ? Number(died.restartInMs) : null,
      resumedFrom: started.step,
      ...lossOf(file, oldPid, started.step),
    };
    out.push(s);
    console.error(`  restart ${i + 1}/${runs}: ${JSON.stringify(s)} (load ${load()})`);
    await cancelAndWait(h);
  }
  return out;
}

function restartRows(s: RestartSample[]): string[] {
  const byToken = s.filter((x) => x.failedByToken !== null);
  return [
    statRow('worker SIGKILL, restarted by `kiln dev` → first resumed step', s.map((x) => x.firstStep), '≤ 3 s', (st) => st.max <= 3000),
    statRow('… → restarted worker process up (first log line; info)', s.flatMap((x) => (x.workerUp === null ? [] : [x.workerUp])), '–', () => true),
    statRow('… → dead attempt failed by task token (info)', byToken.map((x) => x.failedByToken!), '–', () => true),
    statRow('… → restarted worker polls (info)', s.flatMap((x) => (x.polling === null ? [] : [x.polling])), '–', () => true),
    statRow('… → new trainer started (info)', s.map((x) => x.started), '–', () => true),
    statRow('steps lost per worker SIGKILL (same host, contract-following trainer)', s.map((x) => x.stepsLost), '0', (st) => st.max === 0, (x) => `${x}`),
  ];
}

function restartNotes(s: RestartSample[]): string[] {
  const delays = [...new Set(s.map((x) => x.restartDelay))].join(', ');
  return [
    `Restart: the restarted worker failed the dead attempt by task token in ${s.filter((x) => x.failedByToken !== null).length}/${s.length} runs (jobs with a ${RESTART_HEARTBEAT} heartbeat timeout); \`kiln dev\` restart delay ${delays} ms; the old trainer got SIGTERM in ${s.filter((x) => x.sigtermSeen).length}/${s.length}; steps lost: ${s.map((x) => x.stepsLost).join(', ')} (stopped at − resumed from: ${s.map((x) => `${x.stoppedAt}−${x.resumedFrom}`).join(', ')}).`,
  ];
}

// ---------------------------------------------------------------------------------------------
// interruptions: one job, N faults of its owner

interface FaultRow {
  n: number;
  signal: 'SIGKILL' | 'SIGTERM';
  /** The checkpoint of the interrupted attempt, beyond its resume point, known to the workflow before the fault. */
  checkpoint: number;
  workflowKnew: boolean;
  resumedFrom: number;
  /** fault → the first step of the next attempt. */
  takeoverMs: number;
}

const FAULT_PARAMS = { step_ms: 25, checkpoint_every: 20 };

/**
 * The running attempt's first checkpoint beyond its resume point, and whether the workflow learnt of
 * it. The running attempt is re-read on every poll: a continue-as-new may stop one and start the next.
 */
async function newProgress(h: Awaited<ReturnType<KilnTestEnv['submit']>>, file: string, steps: number): Promise<{ cur: Rec; ck: Rec; knew: boolean }> {
  const found = await waitFor(() => {
    const recs = readRecs(file);
    if (recs.some((r) => r.event === 'checkpoint' && r.step >= steps)) throw new Error(`the job trained all ${steps} steps before the faults were done: raise --steps-per-fault`);
    const cur = recs.filter((r) => r.event === 'start').pop();
    const ck = cur && recs.find((r) => r.event === 'checkpoint' && r.attempt === cur.attempt && r.step > cur.step);
    return cur && ck ? { cur, ck } : null;
  }, 60_000, 'a checkpoint of the running attempt beyond its resume point').catch((err: Error) => {
    throw new Error(`${err.message} (last records: ${readRecs(file).slice(-5).map((r) => JSON.stringify(r)).join(' ')})`);
  });
  const knew = await waitFor(async () => ((await h.query(progressQuery)).lastCheckpoint?.step ?? 0) >= found.ck.step, 10_000, 'the workflow to know the checkpoint', 50).then(
    () => true,
    () => false,
  );
  return { ...found, knew };
}

async function benchInterruptions(env: KilnTestEnv, workers: Workers, n: number, stepsPerFault: number): Promise<{ rows: FaultRow[]; summary: JobSummary; steps: number }> {
  await workers.ensure(2);
  const steps = n * stepsPerFault + 200;
  const h = await env.submit('bench', { params: { ...FAULT_PARAMS, steps } });
  const file = recFile(env, h.workflowId);
  const rows: FaultRow[] = [];
  const starting: Array<Promise<void>> = [];
  for (let k = 1; k <= n; k++) {
    const signal = k % 2 ? 'SIGKILL' : 'SIGTERM';
    const { cur, ck, knew } = await newProgress(h, file, steps);
    const victim = await waitFor(() => workers.owner(h.workflowId), 10_000, 'the worker running the trainer');
    const t0 = Date.now();
    victim.kill(signal);
    // A replacement at once, as a supervisor restarts a dead or drained worker; no fault waits for it.
    workers.live = workers.live.filter((w) => w !== victim);
    starting.push(
      env.startGpuWorker({ pool: 'gpu', slots: 2 }).then(
        (w) => void workers.live.push(w),
        (err: Error) => console.error(`  replacement worker after fault ${k} did not start: ${err.message}`),
      ),
    );
    const first = await waitRec(file, (r) => r.event === 'step' && r.attempt > cur.attempt, 120_000, `the first step after fault ${k}`);
    const row: FaultRow = { n: k, signal, checkpoint: ck.step, workflowKnew: knew, resumedFrom: startOf(file, first.attempt)!.step, takeoverMs: first.t - t0 };
    rows.push(row);
    console.error(`  interruption ${k}/${n}: ${JSON.stringify(row)} (load ${load()})`);
  }
  await Promise.all(starting);
  const summary = (await h.result()) as JobSummary;
  return { rows, summary, steps };
}

function interruptionRows(r: { rows: FaultRow[]; summary: JobSummary; steps: number }, n: number): { rows: string[]; note: string } {
  const si = r.summary.session_info;
  const interrupted = (si.attempt_log ?? []).filter((a) => a.outcome === 'interrupted');
  const completed = r.summary.outcome === 'completed' && r.summary.training_metrics.steps === r.steps;
  const counted = si.interruptions === n && interrupted.length === n;
  const met = completed && counted;
  const s = (sig: string) => r.rows.filter((x) => x.signal === sig).map((x) => x.takeoverMs);
  const causes = [...new Set(interrupted.map((a) => (a.cause ?? '?').replace(/worker \d+/, 'worker N').replace(/attempt \d+ of \S+/, 'attempt K of the job')))];
  const behind = r.rows.filter((x) => x.resumedFrom < x.checkpoint).length;
  const rows = [
    statRow(`${n} interruptions of one job (maxAttempts default): fault → first resumed step`, r.rows.map((x) => x.takeoverMs), 'completes; median / p95', () => met),
    statRow('… after SIGKILL (info)', s('SIGKILL'), '–', () => true),
    statRow('… after SIGTERM (info)', s('SIGTERM'), '–', () => true),
  ];
  const note = `Interruptions: job ${r.summary.outcome}, ${r.summary.training_metrics.steps}/${r.steps} steps; summary: attempts ${si.attempts}, interruptions ${si.interruptions ?? 'absent'}, attempt log ${si.attempt_log?.length ?? 0} entries of which ${interrupted.length} interrupted (faults: ${n}) — ${counted ? 'count matches' : '**count does not match**'}; the workflow knew the checkpoint before ${r.rows.filter((x) => x.workflowKnew).length}/${n} faults; resumed behind it after ${behind}; causes: ${causes.join(' | ')}.`;
  return { rows, note };
}

// ---------------------------------------------------------------------------------------------

function commit(): string {
  const rev = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).stdout.trim();
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: REPO, encoding: 'utf8' }).stdout.trim();
  return `${rev || 'unknown'}${dirty ? ' (with local changes)' : ''}`;
}

async function runFigures(env: KilnTestEnv, o: Options, json: RawSamples): Promise<string[]> {
  const md = [TABLE_HEAD];
  const notes: string[] = [];
  if (o.only.includes('restart')) {
    const dev = await startKilnDev(env);
    try {
      const s = await benchRestart(env, dev, o.runs);
      json.restart = s;
      md.push(...restartRows(s));
      notes.push(...restartNotes(s));
    } finally {
      await dev.stop();
    }
  }
  const workers = new Workers(env);
  try {
    if (o.only.some((f) => f !== 'restart')) await env.startControlWorker();
    if (o.only.includes('host-gone')) {
      const s = await benchWorkerLoss(env, workers, o.runs, 'SIGKILL');
      json.hostGone = s;
      md.push(statRow('worker SIGKILL, host gone → first resumed step', s.map((x) => x.firstStep), `≤ heartbeat + 2 s = ${HEARTBEAT_S + 2} s`, (st) => st.max <= (HEARTBEAT_S + 2) * 1000));
      notes.push(`Host gone: resumed from the newest checkpoint the old trainer wrote in ${s.filter((x) => x.resumedFrom === x.lastCkptWritten).length}/${s.length} runs.`);
    }
    if (o.only.includes('interruptions')) {
      const r = await benchInterruptions(env, workers, o.interruptions, o.stepsPerFault);
      json.interruptions = { rows: r.rows, summary: r.summary.session_info, takeover: stats(r.rows.map((x) => x.takeoverMs)) };
      const { rows, note } = interruptionRows(r, o.interruptions);
      md.push(...rows);
      notes.push(note);
    }
  } finally {
    await workers.stopAll().catch(() => undefined);
  }
  return [...md, '', ...notes];
}

async function main(): Promise<void> {
  const o = parseOptions();
  const date = new Date().toISOString();
  const loadBefore = load();
  const json: RawSamples = { date, machine: machine(), commit: commit(), argv: process.argv.slice(2), loadBefore, heartbeatS: HEARTBEAT_S, graceS: GRACE_S };
  const env = await startKilnEnv(CONFIG);
  let body: string[];
  try {
    body = await runFigures(env, o, json);
  } finally {
    await env.cleanup();
  }
  json.loadAfter = load();
  const md = [
    '## Takeover (issue 16)',
    '',
    `Machine: ${machine()} · Date: ${date} · Commit: ${json.commit as string} · Command: \`node dist/bench/takeover.js ${process.argv.slice(2).join(' ')}\` · Load average before: ${loadBefore} · after: ${json.loadAfter as string}`,
    `Config: heartbeat timeout ${HEARTBEAT_S} s (restart runs: ${RESTART_HEARTBEAT} per job), cancel grace ${GRACE_S} s, timeouts.maxAttempts default; trainer bench/fixtures/trainer.mjs (restart and host-gone: ${LONG.step_ms} ms steps, a checkpoint every ${LONG.checkpoint_every}; interruptions: ${FAULT_PARAMS.step_ms} ms, every ${FAULT_PARAMS.checkpoint_every}).`,
    '',
    ...body,
  ];
  console.log(md.join('\n'));
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(json, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
