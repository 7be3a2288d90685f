/**
 * Test harness: a real Temporal dev server (the binary Kiln resolves, via createLocal) or an existing
 * one (TEMPORAL_ADDRESS), a temp state folder and config, an in-process control worker, and GPU
 * workers as real child processes that tests can SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Runtime, DefaultLogger, type Worker } from '@temporalio/worker';
import { parseConfigText, type KilnConfig } from '../../src/config/load';
import { submitJob } from '../../src/client/jobs';
import { buildSpec, type SpecOverrides } from '../../src/config/spec';
import { createLogger } from '../../src/logger';
import { KILN_SEARCH_ATTRIBUTES } from '../../src/shared/searchAttributes';
import { resolveTemporalBinary } from '../../src/temporal/binary';
import { DEV_DYNAMIC_CONFIG } from '../../src/temporal/devServer';
import { ensureSearchAttributes } from '../../src/temporal/registerSearchAttributes';
import { groupMembers, isAlive } from '../../src/supervisor/proc';
import { createControlWorker } from '../../workers/control';
import type { RegistryHooks } from '../../activities/registry';
import { EXAMPLE_TRAINER_PARAMS, PROMOTED_SPIRALS_MODEL } from './fixtures';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const KILN_BIN = path.join(REPO, 'bin', 'kiln');
export const EXAMPLE_TRAINER = path.join(REPO, 'examples', 'trainer', 'train.mjs');
export const FAKE_GPU_BIN = path.join(REPO, 'test', 'fixtures', 'bin');

let runtimeInstalled = false;
function quietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({ logger: new DefaultLogger('WARN') });
  } catch {
    /* already installed by this process */
  }
}

/** The Temporal CLI binary the tests run: the same resolution as `kiln dev`, cached in the repo's .kiln/bin. */
export function temporalBinary(): string {
  const cacheDir = path.join(process.env.KILN_HOME ? path.resolve(process.env.KILN_HOME) : path.join(REPO, '.kiln'), 'bin');
  return resolveTemporalBinary({ cacheDir }).path;
}

export interface ConfigInput {
  /** Extra YAML appended under `trainers:` / `models:` etc. is easier as a full override. */
  models?: string;
  trainers?: string;
  pools?: string;
  timeouts?: string;
  extra?: string;
}

export function defaultConfigYaml(o: ConfigInput = {}): string {
  return `version: 1
server:
  address: ""
workers:
  pools:
${o.pools ?? `    gpu: { devices: auto, slots: 2, metricsPort: 0 }`}
  control: { metricsPort: 0 }
  progressInterval: 1s
trainers:
  example:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}
    evaluate:
      command: [node, ${EXAMPLE_TRAINER}]
      queue: control
${o.trainers ?? ''}
models:
${o.models ?? PROMOTED_SPIRALS_MODEL}
timeouts:
${o.timeouts ?? `  heartbeat: 4s
  stall: 20s
  cancelGrace: 5s
  maxAttempts: 5`}
${o.extra ?? ''}
`;
}

export interface GpuWorkerProc {
  child: ChildProcess;
  pid: number;
  pool: string;
  logFile: string;
  /** Resolves when the worker logged that it polls. */
  ready: Promise<void>;
  exited: Promise<number | null>;
  kill(sig?: NodeJS.Signals): void;
}

export interface KilnTestEnv {
  home: string;
  configFile: string;
  config: KilnConfig;
  address: string;
  client: Client;
  controlQueue: string;
  startControlWorker(hooks?: RegistryHooks): Promise<Worker>;
    /** `wrap`: a command the worker runs under (e.g. `unshare -m …` for a host with its own disk); it must exec the worker. */
  startGpuWorker(o?: { pool?: string; slots?: number; fakeGpus?: number; env?: NodeJS.ProcessEnv; wrap?: string[] }): Promise<GpuWorkerProc>;
  submit(model: string, o?: SpecOverrides & { jobId?: string }): Promise<WorkflowHandle>;
  /** Rewrites the config file (and this.config) for later workers. */
  writeConfig(yaml: string): void;
  cleanup(): Promise<void>;
}

/**
 * `serverArgs` are extra `temporal server start-dev` arguments (e.g. `--dynamic-config-value K=V`);
 * with them the env always starts its own dev server, even when TEMPORAL_ADDRESS is set.
 */
export async function startKilnEnv(configYaml = defaultConfigYaml(), opts: { searchAttributes?: boolean; serverArgs?: string[] } = {}): Promise<KilnTestEnv> {
  quietRuntime();
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-test-'));
  const configFile = path.join(home, 'temporal.yaml');
  let testEnv: TestWorkflowEnvironment | undefined;
  let address: string;
  let connection: Connection;
  if (process.env.TEMPORAL_ADDRESS && !opts.serverArgs?.length) {
    address = process.env.TEMPORAL_ADDRESS;
    connection = await Connection.connect({ address });
    const c = new Client({ connection });
    if (opts.searchAttributes !== false) await ensureSearchAttributes(c, 'default');
  } else {
    testEnv = await TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: temporalBinary() },
        ip: '127.0.0.1',
        extraArgs: ['--log-level', 'error', ...DEV_DYNAMIC_CONFIG, ...(opts.serverArgs ?? [])],
        searchAttributes: opts.searchAttributes === false ? [] : [...KILN_SEARCH_ATTRIBUTES],
      },
    });
    address = testEnv.address;
    connection = await Connection.connect({ address });
  }
  const client = new Client({ connection, namespace: 'default' });
  const controlQueue = `kiln-control-${path.basename(home)}`;
  const env: KilnTestEnv = {
    home,
    configFile,
    config: undefined as unknown as KilnConfig,
    address,
    client,
    controlQueue,
    writeConfig(yaml: string) {
      fs.writeFileSync(configFile, yaml);
      env.config = parseConfigText(yaml, configFile, { KILN_HOME: home, TEMPORAL_ADDRESS: address });
    },
    async startControlWorker(hooks?: RegistryHooks) {
      const log = createLogger({ name: 'test-control', level: process.env.KILN_TEST_LOG ?? 'warn', pretty: false });
      const w = await createControlWorker({ config: env.config, log, taskQueue: controlQueue, hooks });
      const running = w.worker.run().finally(() => w.close());
      workers.push({ worker: w.worker, running });
      return w.worker;
    },
    async startGpuWorker(o = {}) {
      const pool = o.pool ?? 'gpu';
      const logFile = path.join(home, `worker-${pool}-${procs.length}.log`);
      const out = fs.openSync(logFile, 'a');
      const args = [KILN_BIN, 'worker', 'gpu', '--pool', pool];
      if (o.slots) args.push('--slots', String(o.slots));
      const argv = [...(o.wrap ?? []), process.execPath, ...args];
      const child = spawn(argv[0]!, argv.slice(1), {
        env: {
          ...process.env,
          KILN_CONFIG: configFile,
          KILN_HOME: home,
          TEMPORAL_ADDRESS: address,
          KILN_METRICS_PORT: process.env.KILN_METRICS_PORT_FOR_TEST ?? '0',
          KILN_LOG_LEVEL: process.env.KILN_TEST_LOG ?? 'info',
          KILN_LOG_PRETTY: '0',
          ...(o.fakeGpus ? { PATH: `${FAKE_GPU_BIN}:${process.env.PATH}`, FAKE_GPU_COUNT: String(o.fakeGpus) } : {}),
          ...o.env,
        },
        stdio: ['ignore', out, out],
      });
      fs.closeSync(out);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      const ready = (async () => {
        const deadline = Date.now() + 30_000;
        while (Date.now() < deadline) {
          if (child.exitCode !== null) throw new Error(`GPU worker exited during startup:\n${fs.readFileSync(logFile, 'utf8')}`);
          if (fs.readFileSync(logFile, 'utf8').includes('"msg":"worker started"')) return;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`GPU worker did not start in 30s:\n${fs.readFileSync(logFile, 'utf8')}`);
      })();
      const proc: GpuWorkerProc = {
        child,
        pid: child.pid!,
        pool,
        logFile,
        ready,
        exited,
        kill: (sig = 'SIGKILL') => {
          try {
            child.kill(sig);
          } catch {
            /* gone */
          }
        },
      };
      procs.push(proc);
      await ready;
      return proc;
    },
    async submit(model, o = {}) {
      const spec = buildSpec(env.config, model, o);
      return submitJob(client, env.config, spec, { jobId: o.jobId, taskQueue: controlQueue });
    },
    async cleanup() {
      // On a shared server (TEMPORAL_ADDRESS), leave nothing running that a later test's workers could pick up.
      if (!testEnv) {
        for await (const w of client.workflow.list({ query: `TaskQueue = "${controlQueue}" AND ExecutionStatus = "Running"` })) {
          await client.workflow.getHandle(w.workflowId, w.runId).terminate('test cleanup').catch(() => undefined);
        }
      }
      for (const p of procs) p.kill('SIGKILL');
      await Promise.all(procs.map((p) => p.exited));
      for (const w of workers) {
        try {
          w.worker.shutdown();
        } catch {
          /* not running */
        }
      }
      await Promise.allSettled(workers.map((w) => w.running));
      // Trainers of killed workers die with their shim; give the shims their grace period.
      await waitFor(() => trainerPids(home).length === 0, 15_000).catch(() => undefined);
      for (const pid of trainerPids(home)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await connection.close();
      await testEnv?.teardown();
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
  const workers: Array<{ worker: Worker; running: Promise<void> }> = [];
  const procs: GpuWorkerProc[] = [];
  env.writeConfig(configYaml);
  return env;
}

export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs: number, what = 'condition', intervalMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

/** Live trainer processes started from this env's state folder (by their KILN_WORK_DIR). */
export function trainerPids(home: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const env = fs.readFileSync(`/proc/${name}/environ`, 'utf8');
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue;
      if (env.includes(`KILN_WORK_DIR=${home}`) && !cmd.includes('shim.js')) out.push(Number(name));
    } catch {
      /* gone or not ours */
    }
  }
  return out;
}

export function jobDir(env: KilnTestEnv, jobId: string): string {
  return path.join(env.config.artifactsRoot, 'jobs', jobId);
}

export function readTrainerLog(env: KilnTestEnv, jobId: string): string {
  try {
    return fs.readFileSync(path.join(jobDir(env, jobId), 'trainer.log'), 'utf8');
  } catch {
    return '';
  }
}

/** Checkpoint files currently on disk for a job. */
export function checkpointFiles(env: KilnTestEnv, jobId: string): string[] {
  try {
    return fs.readdirSync(path.join(jobDir(env, jobId), 'checkpoints')).filter((n) => !n.endsWith('.tmp'));
  } catch {
    return [];
  }
}

export { groupMembers, isAlive };
