/**
 * Process-level helpers for the reliability, chaos and load suites: a control worker as a child
 * process (so it can be SIGKILLed), a Temporal dev server the test owns (so it can be restarted on
 * the same port and SQLite file), the CLI as a child, and /proc views of trainers and their supervisors
 * (statistics and RSS sampling live in bench/stats.ts).
 * Additive to helpers/kiln.ts, which stays the one harness for env setup.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SqliteModelRegistry } from '../../src/registry/sqlite';
import { freePort, startDevServer, type DevServer } from '../../src/temporal/devServer';
import { KILN_BIN, startKilnEnv, temporalBinary, waitFor, type KilnTestEnv } from './kiln';

export const CONTROL_WORKER_MAIN = path.join(__dirname, 'controlWorkerMain.js');
export const FIXTURES = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures');

export interface ChildProc {
  child: ChildProcess;
  pid: number;
  logFile: string;
  exited: Promise<number | null>;
  kill(sig?: NodeJS.Signals): void;
}

function wrap(child: ChildProcess, logFile: string): ChildProc {
  const exited = new Promise<number | null>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r(child.exitCode);
    else child.once('exit', (code) => r(code));
  });
  return {
    child,
    pid: child.pid!,
    logFile,
    exited,
    kill: (sig = 'SIGKILL') => {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    },
  };
}

export function childEnv(env: KilnTestEnv, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    KILN_CONFIG: env.configFile,
    KILN_HOME: env.home,
    TEMPORAL_ADDRESS: env.address,
    KILN_LOG_LEVEL: process.env.KILN_TEST_LOG ?? 'info',
    KILN_LOG_PRETTY: '0',
    ...extra,
  };
}

export interface ControlWorkerProcOptions {
  /** Default: kiln-control (what `kiln submit` targets). */
  taskQueue?: string;
  /**
   * Test hook: on attempt 1 of registerVersion, after the registry write, write this file and block
   * until killed. Lets a test SIGKILL the process at a known point inside registration.
   */
  holdRegisterFile?: string;
}

/** A control worker in its own process (test/helpers/controlWorkerMain.ts), started and ready. */
export async function startControlWorkerProcess(env: KilnTestEnv, o: ControlWorkerProcOptions = {}): Promise<ChildProc> {
  const logFile = path.join(env.home, `control-${Date.now()}-${Math.random().toString(36).slice(2, 6)}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [CONTROL_WORKER_MAIN], {
    env: childEnv(env, {
      KILN_TEST_CONTROL_QUEUE: o.taskQueue ?? 'kiln-control',
      ...(o.holdRegisterFile ? { KILN_TEST_HOLD_REGISTER: o.holdRegisterFile } : {}),
    }),
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const p = wrap(child, logFile);
  procs.add(p);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`control worker exited during startup:\n${fs.readFileSync(logFile, 'utf8')}`);
    if (fs.readFileSync(logFile, 'utf8').includes('"msg":"worker started"')) return p;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`control worker did not start in 30s:\n${fs.readFileSync(logFile, 'utf8')}`);
}

/** Runs `node bin/kiln <args>` against the env; resolves with exit code and output. */
export function runKiln(env: KilnTestEnv | null, args: string[], o: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KILN_BIN, ...args], {
      env: env ? childEnv(env, o.env) : { ...process.env, ...o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kiln ${args.join(' ')} did not finish in ${o.timeoutMs ?? 60_000} ms\n${stdout}\n${stderr}`));
    }, o.timeoutMs ?? 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** Spawns `node bin/kiln <args>` without waiting; stdout lines are delivered to onLine. */
export function spawnKiln(env: KilnTestEnv, args: string[], onLine: (line: string) => void): ChildProc {
  const logFile = path.join(env.home, `cli-${Date.now()}.log`);
  const child = spawn(process.execPath, [KILN_BIN, ...args], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    fs.appendFileSync(logFile, d);
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  child.stderr!.on('data', (d: Buffer) => fs.appendFileSync(logFile, d));
  const p = wrap(child, logFile);
  procs.add(p);
  return p;
}

/** A dev server this test owns: stop it (SIGTERM) and start it again on the same port and SQLite file. */
export interface OwnedServer {
  address: string;
  port: number;
  dbFile: string;
  current: DevServer | null;
  start(): Promise<number>;
  stop(): Promise<number>;
}

export async function ownedDevServer(dir: string): Promise<OwnedServer> {
  const port = await freePort();
  const dbFile = path.join(dir, 't.sqlite');
  const s: OwnedServer = {
    address: `127.0.0.1:${port}`,
    port,
    dbFile,
    current: null,
    async start() {
      const t0 = Date.now();
      s.current = await startDevServer({
        binary: temporalBinary(),
        dbFile,
        ip: '127.0.0.1',
        port,
        uiPort: 0,
        metricsPort: 0,
        namespace: 'default',
        logFile: path.join(dir, 'temporal-server.log'),
        headless: true,
      });
      return Date.now() - t0;
    },
    async stop() {
      const t0 = Date.now();
      await s.current?.stop(10_000);
      s.current = null;
      return Date.now() - t0;
    },
  };
  await s.start();
  return s;
}

/** startKilnEnv against a server the caller runs (the harness honours TEMPORAL_ADDRESS). */
export async function startKilnEnvOn(address: string, yaml: string): Promise<KilnTestEnv> {
  const prev = process.env.TEMPORAL_ADDRESS;
  process.env.TEMPORAL_ADDRESS = address;
  try {
    return await startKilnEnv(yaml);
  } finally {
    if (prev === undefined) delete process.env.TEMPORAL_ADDRESS;
    else process.env.TEMPORAL_ADDRESS = prev;
  }
}

const procs = new Set<ChildProc>();

/** SIGKILLs every child this module started for the env (call from after()). */
export async function killAllStarted(env: KilnTestEnv): Promise<void> {
  const mine = [...procs].filter((p) => p.logFile.startsWith(`${env.home}${path.sep}`));
  for (const p of mine) p.kill('SIGKILL');
  await Promise.all(mine.map((p) => p.exited));
  for (const p of mine) procs.delete(p);
}

// ---------------------------------------------------------------------------------------------
// /proc sampling

export interface TrainerProc {
  pid: number;
  jobId: string;
  attempt: number;
  mode: string;
  /** Process state letter: R, S, T (stopped), … */
  state: string;
}

/** Live (non-zombie) trainer and evaluate processes started by this env, with their job and attempt. */
export function jobProcesses(home: string, jobId?: string): TrainerProc[] {
  const out: TrainerProc[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z' || state === 'X') continue;
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (cmd.includes('shim.js')) continue;
      const env = fs.readFileSync(`/proc/${name}/environ`, 'utf8');
      if (!env.includes(`KILN_WORK_DIR=${home}`)) continue;
      const vars = new Map(env.split('\0').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as const));
      const j = vars.get('KILN_JOB_ID') ?? '';
      if (jobId && j !== jobId) continue;
      out.push({ pid: Number(name), jobId: j, attempt: Number(vars.get('KILN_ATTEMPT') ?? 0), mode: vars.get('KILN_MODE') ?? 'train', state });
    } catch {
      /* gone, or not ours */
    }
  }
  return out;
}

function procState(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return null;
  }
}

/**
 * True when the trainer's supervisor chain is up: its shim's parent is a running (not stopped) Kiln
 * worker. False for a trainer whose worker died (the shim was re-parented) or is SIGSTOPped.
 */
export function isSupervised(trainerPid: number): boolean {
  const w = workerOfTrainer(trainerPid);
  if (!w || w === 1) return false;
  const st = procState(w);
  if (!st || st === 'T' || st === 't' || st === 'Z') return false;
  try {
    const cmd = fs.readFileSync(`/proc/${w}/cmdline`, 'utf8');
    return cmd.includes('worker') || cmd.includes('node');
  } catch {
    return false;
  }
}

/** The pid of the shim's parent (the worker) for a trainer pid. */
export function workerOfTrainer(trainerPid: number): number | null {
  try {
    const shim = Number(fs.readFileSync(`/proc/${trainerPid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
    return Number(fs.readFileSync(`/proc/${shim}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Job state read from disk and from the registry

export interface ManifestEntry {
  step: number;
  path: string;
}

export function readManifest(workDir: string): ManifestEntry[] {
  try {
    return (JSON.parse(fs.readFileSync(path.join(workDir, 'checkpoints.json'), 'utf8')) as { checkpoints: ManifestEntry[] }).checkpoints;
  } catch {
    return [];
  }
}

export function lastVerifiedStep(workDir: string): number {
  return readManifest(workDir)
    .filter((c) => fs.existsSync(c.path))
    .reduce((m, c) => Math.max(m, c.step), 0);
}

/** Versions in the registry that name this job (opened read-only by a second connection). */
export async function registryVersionsForJob(home: string, jobId: string): Promise<number> {
  const file = path.join(home, 'registry.sqlite');
  if (!fs.existsSync(file)) return 0;
  const reg = new SqliteModelRegistry(file);
  try {
    const byJob = await reg.getByJob(jobId);
    const listed = (await reg.list()).filter((v) => v.jobId === jobId).length;
    if (byJob === null && listed !== 0) throw new Error(`registry: list() has ${listed} versions for ${jobId} but getByJob() has none`);
    return listed;
  } finally {
    await reg.close();
  }
}

/** Polls a condition fast (for landing a fault at a moment). */
export async function waitFast<T>(fn: () => T | undefined | null | false, timeoutMs: number, what: string, intervalMs = 2): Promise<T> {
  return waitFor(fn as () => T, timeoutMs, what, intervalMs);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
