/**
 * The frozen-owner scenario (issue 16: "SIGSTOP of a GPU worker in another mount namespace"), shared by
 * test/fleetStop.test.ts (one run, asserted) and bench/overlap.ts (N runs, figures):
 *
 * two GPU hosts (own mount namespaces, private tmpfs at one state path), S3 storage on moto, one job.
 * The owning worker (not its trainer) is SIGSTOPped; /proc is sampled every 50 ms for the job's
 * trainers on both hosts until the job ends. Once the other host's attempt has verified a checkpoint
 * of its own, the frozen worker is SIGCONTed while that attempt still trains, so the stale attempt
 * wakes up with its events (and possibly checkpoints its trainer wrote while the worker was frozen)
 * still queued: it must start nothing and store nothing.
 *
 * "Live" trainer: any process of the job's trainer (KILN_JOB_ID in its environment, not the shim)
 * that exists and is not a zombie. A stopped ('T') trainer counts as live too: SIGCONT would make it
 * run again. The SIGSTOPped worker's trainer itself keeps running (only the worker is stopped), which
 * is the danger: it goes on training and writing checkpoints until the shim's dead-man's switch stops it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { progressQuery } from '../../src/shared/messages';
import type { JobProgress, JobSummary } from '../../src/shared/summary';
import { StorageSchema } from '../../src/config/schema';
import { completedCheckpoints, S3Store, verifyCheckpoint, type S3StorageConfig } from '../../src/storage';
import { isAlive } from '../../src/supervisor/proc';
import { EXAMPLE_TRAINER_PARAMS } from './fixtures';
import { createBucket, hostProcesses, hostWrap, jobTrainers, mountNamespace, procState, s3StorageYaml } from './hosts';
import { defaultConfigYaml, EXAMPLE_TRAINER, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './kiln';
import { startMoto, type MotoServer } from './moto';

export const HEARTBEAT_MS = 3000;
export const GRACE_MS = 2000;
export const SAMPLE_MS = 50;
const BUCKET = 'kiln-frozen';
const PREFIX = 'frozen';
export const FROZEN_JOB = { epochs: 40, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 };
export const FROZEN_JOB_STEPS = FROZEN_JOB.epochs * FROZEN_JOB.steps_per_epoch;

export interface FrozenFixture {
  env: KilnTestEnv;
  moto: MotoServer;
  /** The state path every host mounts its own tmpfs at. */
  state: string;
  store: S3Store;
  startHost(): Promise<GpuWorkerProc>;
  /** SIGKILLs every host worker (by pid), waits for their trainers and shims to go; returns the pids still alive (none expected). */
  stopHosts(): Promise<number[]>;
  close(): Promise<void>;
}

function configYaml(state: string, storage: string): string {
  return defaultConfigYaml({
    trainers: `  plain:\n    command: [node, ${EXAMPLE_TRAINER}]\n    params:${EXAMPLE_TRAINER_PARAMS}`,
    models: `  spirals:\n    trainer: plain\n    dataset: synthetic://spirals/v1\n    params: { epochs: 2, steps_per_epoch: 10 }`,
    pools: '    gpu: { devices: auto, slots: 1, metricsPort: 0 }',
    timeouts: `  heartbeat: ${HEARTBEAT_MS / 1000}s\n  stall: 30s\n  cancelGrace: ${GRACE_MS / 1000}s\n  maxAttempts: 5`,
    extra: `artifacts:\n  root: ${path.join(state, 'artifacts')}\n${storage}`,
  });
}

export async function startFrozenFixture(): Promise<FrozenFixture> {
  const moto = await startMoto();
  await createBucket(moto, BUCKET);
  const env = await startKilnEnv(defaultConfigYaml());
  // The control worker runs in this process and reaches the same bucket (moto's test credentials).
  for (const [k, v] of Object.entries(moto.env)) process.env[k] ??= v;
  const state = path.join(env.home, 'state');
  fs.mkdirSync(state);
  env.writeConfig(configYaml(state, s3StorageYaml(BUCKET, PREFIX, moto.endpoint)));
  await env.startControlWorker();
  const store = new S3Store(StorageSchema.parse({ kind: 's3', bucket: BUCKET, prefix: PREFIX, endpoint: moto.endpoint, forcePathStyle: true, accessKeyId: 'testing', secretAccessKey: 'testing' }) as S3StorageConfig);
  const hosts: GpuWorkerProc[] = [];
  const fx: FrozenFixture = {
    env,
    moto,
    state,
    store,
    async startHost() {
      const w = await env.startGpuWorker({ slots: 1, wrap: hostWrap(state), env: { ...moto.env, KILN_HOME: state, KILN_CONFIG: env.configFile } });
      hosts.push(w);
      return w;
    },
    async stopHosts() {
      for (const h of hosts) {
        h.kill('SIGCONT');
        h.kill('SIGKILL');
      }
      await Promise.all(hosts.map((h) => h.exited));
      await waitFor(() => hostProcesses(state).length === 0, 15_000, 'every trainer and shim of the hosts to exit').catch(() => undefined);
      const left = [...hosts.filter((h) => isAlive(h.pid)).map((h) => h.pid), ...hostProcesses(state)];
      hosts.length = 0;
      return left;
    },
    async close() {
      await fx.stopHosts().catch(() => undefined);
      store.close();
      await env.cleanup();
      await moto.stop();
    },
  };
  return fx;
}

/** Samples the job's live trainers every SAMPLE_MS, by host (mount namespace). */
class TrainerSampler {
  samples = 0;
  /** The longest stretch (ms) during which more than one trainer of the job was live. */
  longestOverlapMs = 0;
  /** Samples that saw more than one live trainer: `pid@host …`. */
  overlaps: string[] = [];
  private overlapSince: number | null = null;
  private readonly firstSeen = new Map<string, number>();
  private readonly lastSeen = new Map<string, number>();
  private readonly pidsAfter = new Map<number, Set<number>>();
  private readonly timer: NodeJS.Timeout;
  private stopped = false;
  constructor(
    private readonly jobId: string,
    private readonly hostOf: (ns: string | null) => string,
  ) {
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
  }
  private sample(): void {
    const now = Date.now();
    const live = jobTrainers(this.jobId).map((pid) => ({ pid, host: this.hostOf(mountNamespace(pid)) }));
    this.samples += 1;
    for (const t of live) {
      if (!this.firstSeen.has(t.host)) this.firstSeen.set(t.host, now);
      this.lastSeen.set(t.host, now);
      for (const [since, pids] of this.pidsAfter) if (now >= since && t.host === 'A') pids.add(t.pid);
    }
    if (live.length > 1) {
      this.overlapSince ??= now;
      if (this.overlaps.length < 20) this.overlaps.push(live.map((t) => `${t.pid}@${t.host}:${procState(t.pid)}`).join(' + '));
    } else if (this.overlapSince !== null) {
      this.longestOverlapMs = Math.max(this.longestOverlapMs, now - this.overlapSince);
      this.overlapSince = null;
    }
  }
  /** Starts collecting host A's trainer pids seen from `t` on. */
  watchAFrom(t: number): Set<number> {
    const s = new Set<number>();
    this.pidsAfter.set(t, s);
    return s;
  }
  firstSeenOn = (host: string) => this.firstSeen.get(host) ?? null;
  lastSeenOn = (host: string) => this.lastSeen.get(host) ?? null;
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.sample();
    if (this.overlapSince !== null) this.longestOverlapMs = Math.max(this.longestOverlapMs, Date.now() - this.overlapSince);
  }
}

export interface FrozenRun {
  jobId: string;
  summary: JobSummary;
  aPid: number;
  bPid: number;
  samples: number;
  /** The longest time two trainers of the job were live at once (ms, sampled every 50 ms). */
  overlapMs: number;
  overlaps: string[];
  /** SIGSTOP → the last sample that saw host A's trainer (ms). */
  oldTrainerGoneMs: number;
  /** SIGSTOP → the first sample that saw a trainer on host B (ms). */
  takeoverMs: number;
  /** The newest checkpoint verified (with a storage URI) before SIGSTOP. */
  verifiedBeforeStop: number;
  /** Host B's first own verified checkpoint, when the frozen worker was SIGCONTed. */
  verifiedByBAtCont: number;
  /** The frozen worker's state right after SIGCONT (not 'T' once it runs again). */
  stateAfterCont: string | null;
  /** Trainers of the job seen on host A after SIGCONT (none expected). */
  aTrainersAfterCont: number[];
  /** What host A's worker logged after SIGCONT (pino `msg`s, in order, deduplicated). */
  aMessagesAfterCont: string[];
  /** Of those, messages that mean it trained or stored something (none expected). */
  aStaleActions: string[];
  /** Completed checkpoints in storage at the end, and whether each verifies. */
  stored: { key: string; verified: boolean }[];
}

const STALE_ACTIONS = ['starting trainer', 'checkpoint uploaded and verified', 'model artifact uploaded and verified', 'adopted checkpoints'];

/** pino JSON lines of a worker log from `since` on. */
function logMessagesSince(file: string, since: number): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    try {
      const o = JSON.parse(line) as { time?: number; msg?: string };
      if (typeof o.time === 'number' && o.time >= since && o.msg && !out.includes(o.msg)) out.push(o.msg);
    } catch {
      /* not a JSON line */
    }
  }
  return out;
}

const progress = async (fx: FrozenFixture, jobId: string) => (await fx.env.client.workflow.getHandle(jobId).query(progressQuery)) as JobProgress;

async function storedCheckpoints(fx: FrozenFixture, jobId: string): Promise<FrozenRun['stored']> {
  const keys = await completedCheckpoints(fx.store, `jobs/${jobId}/checkpoints`);
  return Promise.all(keys.map(async (key) => ({ key, verified: (await verifyCheckpoint(fx.store, key)).verified })));
}

/** Waits for host B's attempt to verify a checkpoint of its own (beyond `after`) while it still trains. */
const verifiedByB = (fx: FrozenFixture, jobId: string, bPid: number, after: number) =>
  waitFor(async () => {
    const p = await progress(fx, jobId);
    const mine = p.workerId?.includes(`:${bPid}:`) && p.lastCheckpoint?.uri && p.lastCheckpoint.step > after;
    return mine && p.phase === 'training' && p.step < FROZEN_JOB_STEPS - 50 ? p : null;
  }, 60_000, 'host B to take over and verify a checkpoint of its own');

/** One run of the scenario; host workers are SIGKILLed (by pid) and their processes gone before it returns. */
export async function runFrozenOwner(fx: FrozenFixture): Promise<FrozenRun> {
  const a = await fx.startHost();
  const h = await fx.env.submit('spirals', { params: FROZEN_JOB });
  const before = await waitFor(async () => {
    const p = await progress(fx, h.workflowId);
    return p.lastCheckpoint?.uri && p.lastCheckpoint.step >= 10 && jobTrainers(h.workflowId).length === 1 ? p : null;
  }, 60_000, 'a verified checkpoint at step >= 10 and a running trainer');
  const b = await fx.startHost();
  const nsA = mountNamespace(a.pid);
  const nsB = mountNamespace(b.pid);
  if (!nsA || !nsB || nsA === nsB) throw new Error(`the hosts must have their own mount namespaces: A ${nsA}, B ${nsB}`);
  const sampler = new TrainerSampler(h.workflowId, (ns) => (ns === nsA ? 'A' : ns === nsB ? 'B' : `other(${ns})`));
  let run: FrozenRun;
  try {
    const t0 = Date.now();
    a.kill('SIGSTOP');
    const byB = await verifiedByB(fx, h.workflowId, b.pid, before.lastCheckpoint!.step);
    const aLastSeen = sampler.lastSeenOn('A');
    const tCont = Date.now();
    const aAfter = sampler.watchAFrom(tCont);
    a.kill('SIGCONT');
    await new Promise((r) => setTimeout(r, 200));
    const stateAfterCont = procState(a.pid);
    const summary = (await h.result()) as JobSummary;
    // Give the woken worker time to act on whatever it had queued before looking at what it did.
    await new Promise((r) => setTimeout(r, 2 * HEARTBEAT_MS));
    sampler.stop();
    const aMessagesAfterCont = logMessagesSince(a.logFile, tCont);
    run = {
      jobId: h.workflowId,
      summary,
      aPid: a.pid,
      bPid: b.pid,
      samples: sampler.samples,
      overlapMs: sampler.longestOverlapMs,
      overlaps: sampler.overlaps,
      oldTrainerGoneMs: aLastSeen === null ? NaN : aLastSeen - t0,
      takeoverMs: (sampler.firstSeenOn('B') ?? NaN) - t0,
      verifiedBeforeStop: before.lastCheckpoint!.step,
      verifiedByBAtCont: byB.lastCheckpoint!.step,
      stateAfterCont,
      aTrainersAfterCont: [...aAfter],
      aMessagesAfterCont,
      aStaleActions: aMessagesAfterCont.filter((m) => STALE_ACTIONS.some((s) => m.startsWith(s))),
      stored: await storedCheckpoints(fx, h.workflowId),
    };
  } finally {
    sampler.stop();
    const left = await fx.stopHosts();
    if (left.length) console.error(`processes of the hosts still alive after SIGKILL: ${left.join(', ')}`);
  }
  const left = [run.aPid, run.bPid, ...hostProcesses(fx.state)].filter((p) => isAlive(p));
  if (left.length) throw new Error(`processes of the hosts still alive after SIGKILL: ${left.join(', ')}`);
  return run;
}
