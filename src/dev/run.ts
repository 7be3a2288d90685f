/**
 * `kiln dev`: the whole stack on one machine. Starts the Temporal dev server (persistent SQLite,
 * Web UI, Kiln's search attributes) unless server.address points at a cluster, starts and supervises
 * the workers and the server (a dead one is restarted with backoff: seed 004's daemon stayed dead for
 * 30 hours), and on Ctrl-C / SIGTERM drains the workers, then stops the server. It owns what it starts:
 * one `kiln dev` per state folder (lock.ts), the server dies with it even on SIGKILL, and an orphaned
 * server of a dead `kiln dev` is stopped (server.ts). No process is left behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import type { Logger } from '../logger';
import { syncSchedules, syncSummary } from '../client/schedules';
import { resolveTemporalBinary } from '../temporal/binary';
import { connectClient, serverAddress } from '../temporal/connect';
import { devUiUrl } from '../temporal/devServer';
import { ensureSearchAttributes } from '../temporal/registerSearchAttributes';
import { processStartTime } from '../supervisor/proc';
import { watchConfig } from './configWatch';
import { StateLock } from './lock';
import { removeDevRecord, ServerKeeper, stopOrphanServer, writeDevRecord } from './server';
import { WorkerSupervisor, type WorkerSpec } from './supervise';

export interface DevOptions {
  config: KilnConfig;
  log: Logger;
  /** Called once server and workers are up; `kiln dev --demo` runs its job here. */
  onReady?: (ctx: { address: string; uiUrl: string | undefined }) => Promise<void>;
  /** Stop after onReady resolves (the demo in CI, tests). */
  exitAfterReady?: boolean;
  /** Extra env for worker processes. */
  workerEnv?: NodeJS.ProcessEnv;
}

interface ServerInfo {
  /** Set when this process runs the server (and so stops and restarts it). */
  server: ServerKeeper | undefined;
  address: string;
  uiUrl: string | undefined;
}

const dbFileOf = (config: KilnConfig) => path.resolve(config.home, config.dev.dbFile);

/** The address and UI `kiln dev` will serve, known before anything starts (for the lock's holder note). */
function plannedAddress(config: KilnConfig): { address: string; uiUrl?: string } {
  if (config.server.address) return { address: serverAddress(config) };
  return { address: `${config.dev.ip}:${config.dev.port}`, uiUrl: devUiUrl(config.dev.ip, config.dev.uiPort) };
}

/** The local dev server, or none when server.address names a cluster. */
async function startServer(config: KilnConfig, log: Logger, keeper: (k: ServerKeeper) => void, stopping: () => boolean): Promise<ServerInfo> {
  const address = serverAddress(config);
  if (config.server.address) {
    log.info({ address }, 'using existing Temporal cluster (no local server started)');
    writeDevRecord(config.home, { pid: process.pid, pidStart: processStartTime(process.pid), serverPid: null, serverStart: null, dbFile: null, address });
    return { server: undefined, address, uiUrl: undefined };
  }
  const bin = resolveTemporalBinary({ cacheDir: path.join(config.home, 'bin'), log: (m) => log.info(m) });
  log.info({ version: bin.version, path: bin.path, route: bin.route }, 'Temporal CLI');
  const dbFile = dbFileOf(config);
  await stopOrphanServer(config.home, dbFile, log);
  const opts = {
    binary: bin.path,
    dbFile,
    ip: config.dev.ip,
    port: config.dev.port,
    uiPort: config.dev.uiPort,
    metricsPort: config.dev.metricsPort,
    namespace: config.server.namespace,
    logFile: path.join(config.home, 'logs', 'temporal-server.log'),
  };
  const { uiUrl } = plannedAddress(config);
  // Recorded the moment it exists: a kiln dev killed before the server is ready still leaves its pid.
  const record = (serverPid: number) =>
    writeDevRecord(config.home, { pid: process.pid, pidStart: processStartTime(process.pid), serverPid, serverStart: processStartTime(serverPid), dbFile, address: `${opts.ip}:${opts.port}`, uiUrl });
  const k = new ServerKeeper(opts, log, record);
  keeper(k);
  if (stopping()) throw new Error('stopped during startup');
  const server = await k.start();
  log.info({ address: server.address, db: dbFile, pid: server.pid, guarded: server.guarded }, 'Temporal dev server started');
  if (!server.guarded) log.warn('setpriv --pdeathsig is not available: the dev server would outlive a SIGKILLed kiln dev (the next kiln dev stops it)');
  return { server: k, address: server.address, uiUrl: server.uiUrl };
}

/** Search attributes, then the retrain schedules; a failed sync is logged, not fatal. */
async function prepareNamespace(config: KilnConfig, log: Logger, address: string): Promise<void> {
  const client = await connectClient({ ...config, server: { ...config.server, address } });
  try {
    const added = await ensureSearchAttributes(client, config.server.namespace);
    if (added.length) log.info({ added }, 'registered search attributes');
    try {
      const synced = await syncSchedules(client, config);
      log.info({ created: synced.created, updated: synced.updated, deleted: synced.deleted, unchanged: synced.unchanged.length, conflicts: synced.conflicts }, syncSummary(synced));
    } catch (err) {
      log.error({ err: (err as Error).message }, 'retrain schedules sync failed (run kiln schedules sync to retry)');
    }
  } finally {
    await client.connection.close();
  }
}

/** The control worker and one worker per GPU pool. */
function workerSpecs(config: KilnConfig): WorkerSpec[] {
  return [{ name: 'control', args: ['worker', 'control'] }, ...Object.keys(config.workers.pools).map((pool) => ({ name: `gpu-${pool}`, args: ['worker', 'gpu', '--pool', pool] }))];
}

function printBanner(config: KilnConfig, s: ServerInfo): void {
  const lines = [
    '',
    `  Kiln is running.`,
    `  Temporal server:  ${s.address} (namespace ${config.server.namespace})`,
    s.uiUrl ? `  Web UI:           ${s.uiUrl}/namespaces/${config.server.namespace}/workflows` : '',
    `  State folder:     ${config.home}`,
    `  Stop with Ctrl-C.`,
    '',
  ];
  process.stdout.write(lines.filter((l) => l !== '').join('\n') + '\n');
}

/**
 * One `kiln dev`: startup steps that each check `stopping` first, and a shutdown that may arrive at any
 * moment (Ctrl-C during startup): it halts the server start at once, waits for the startup step in
 * flight, then stops whatever was started, in reverse order.
 */
class DevStack {
  private stopping = false;
  private lock: StateLock | undefined;
  private server: ServerKeeper | undefined;
  private readonly workers: WorkerSupervisor;
  private startup: Promise<ServerInfo | null> | undefined;
  private unwatch: (() => void) | undefined;
  private resolveStopped!: () => void;
  readonly stopped = new Promise<void>((r) => (this.resolveStopped = r));

  constructor(private readonly o: DevOptions) {
    this.workers = new WorkerSupervisor(o.log);
  }

  /** The stack, or null when a shutdown came first. */
  start(): Promise<ServerInfo | null> {
    this.startup = this.startSteps().catch((err: unknown) => {
      if (this.stopping) return null;
      throw err;
    });
    return this.startup;
  }

  private async startSteps(): Promise<ServerInfo | null> {
    const { config, log } = this.o;
    fs.mkdirSync(config.home, { recursive: true });
    this.lock = await StateLock.acquire(config.home, plannedAddress(config), log);
    if (this.stopping) return null;
    const s = await startServer(config, log, (k) => (this.server = k), () => this.stopping);
    if (this.stopping) return null;
    await prepareNamespace(config, log, s.address);
    if (this.stopping) return null;
    const env: NodeJS.ProcessEnv = { ...process.env, ...this.o.workerEnv, KILN_CONFIG: config.file, KILN_HOME: config.home, TEMPORAL_ADDRESS: s.address, KILN_PARENT_PID: String(process.pid) };
    this.workers.start(workerSpecs(config), env);
    log.info({ workers: this.workers.pids(), lockPid: this.lock.pid }, 'workers started');
    this.unwatch = watchConfig(config, log);
    printBanner(config, s);
    return s;
  }

  shutdown = async (why: string): Promise<void> => {
    if (this.stopping) return this.stopped;
    this.stopping = true;
    const { config, log } = this.o;
    this.server?.halt();
    await this.startup?.catch(() => undefined);
    this.unwatch?.();
    if (this.lock) {
      log.info({ why }, 'shutting down: draining workers, then the server');
      await this.workers.stop(config.timeouts.cancelGrace + 15_000);
      log.info('workers stopped');
      if (await this.server?.stop(10_000)) log.info('Temporal dev server stopped');
      removeDevRecord(config.home);
      await this.lock.release();
    }
    this.resolveStopped();
  };
}

/** Runs the demo (or any onReady); a failure sets exit code 1. With exitAfterReady, then shuts down. */
async function runReady(o: DevOptions, s: ServerInfo, shutdown: (why: string) => Promise<void>): Promise<void> {
  if (!o.onReady) return;
  try {
    await o.onReady({ address: s.address, uiUrl: s.uiUrl });
  } catch (err) {
    o.log.error({ err: (err as Error).message }, 'demo failed');
    process.exitCode = 1;
    if (o.exitAfterReady) await shutdown('demo failed');
  }
  if (o.exitAfterReady) await shutdown('demo finished');
}

export async function runDev(o: DevOptions): Promise<void> {
  const dev = new DevStack(o);
  const onSignal = (sig: NodeJS.Signals) => void dev.shutdown(sig);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const s = await dev.start();
    if (s) await runReady(o, s, dev.shutdown);
    await dev.stopped;
  } catch (err) {
    await dev.shutdown('startup failed');
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
