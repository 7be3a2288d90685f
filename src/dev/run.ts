/**
 * `kiln dev`: the whole stack on one machine. Starts the Temporal dev server (persistent SQLite,
 * Web UI, Kiln's search attributes) unless server.address points at a cluster, starts and supervises
 * the workers (a dead one is restarted with backoff: seed 004's daemon stayed dead for 30 hours),
 * and on Ctrl-C / SIGTERM drains the workers, then stops the server. No process is left behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import type { Logger } from '../logger';
import { syncSchedules, syncSummary } from '../client/schedules';
import { resolveTemporalBinary } from '../temporal/binary';
import { connectClient, serverAddress } from '../temporal/connect';
import { startDevServer, type DevServer } from '../temporal/devServer';
import { ensureSearchAttributes } from '../temporal/registerSearchAttributes';
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
  /** Set when this process started the server (and so stops it). */
  server: DevServer | undefined;
  address: string;
  uiUrl: string | undefined;
}

const devPidfile = (config: KilnConfig) => path.join(config.home, 'run', 'dev.json');

/** The local dev server, or none when server.address names a cluster. */
async function startServer(config: KilnConfig, log: Logger): Promise<ServerInfo> {
  const address = serverAddress(config);
  if (config.server.address) {
    log.info({ address }, 'using existing Temporal cluster (no local server started)');
    return { server: undefined, address, uiUrl: undefined };
  }
  const bin = resolveTemporalBinary({ cacheDir: path.join(config.home, 'bin'), log: (m) => log.info(m) });
  log.info({ version: bin.version, path: bin.path, route: bin.route }, 'Temporal CLI');
  const server = await startDevServer({
    binary: bin.path,
    dbFile: path.resolve(config.home, config.dev.dbFile),
    ip: config.dev.ip,
    port: config.dev.port,
    uiPort: config.dev.uiPort,
    metricsPort: config.dev.metricsPort,
    namespace: config.server.namespace,
    logFile: path.join(config.home, 'logs', 'temporal-server.log'),
  });
  log.info({ address: server.address, db: path.resolve(config.home, config.dev.dbFile) }, 'Temporal dev server started');
  return { server, address: server.address, uiUrl: server.uiUrl };
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

/** Brings the stack up; `stack.server` is set as soon as a server runs, so a failed startup can stop it. */
async function startStack(o: DevOptions, stack: { server?: DevServer }, workers: WorkerSupervisor): Promise<ServerInfo> {
  const { config, log } = o;
  const s = await startServer(config, log);
  stack.server = s.server;
  await prepareNamespace(config, log, s.address);
  fs.mkdirSync(path.join(config.home, 'run'), { recursive: true });
  fs.writeFileSync(devPidfile(config), JSON.stringify({ pid: process.pid, serverPid: s.server?.pid ?? null, address: s.address, uiUrl: s.uiUrl }));
  const env: NodeJS.ProcessEnv = { ...process.env, ...o.workerEnv, KILN_CONFIG: config.file, KILN_HOME: config.home, TEMPORAL_ADDRESS: s.address, KILN_PARENT_PID: String(process.pid) };
  workers.start(workerSpecs(config), env);
  log.info({ workers: workers.pids() }, 'workers started');
  printBanner(config, s);
  return s;
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
  const { config, log } = o;
  fs.mkdirSync(config.home, { recursive: true });
  const stack: { server?: DevServer } = {};
  const workers = new WorkerSupervisor(log);
  let stopping = false;
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => (resolveStopped = r));

  const shutdown = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'shutting down: draining workers, then the server');
    await workers.stop(config.timeouts.cancelGrace + 15_000);
    log.info('workers stopped');
    if (stack.server) {
      await stack.server.stop(10_000);
      log.info('Temporal dev server stopped');
    }
    fs.rmSync(devPidfile(config), { force: true });
    resolveStopped();
  };
  const onSignal = (sig: NodeJS.Signals) => void shutdown(sig);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const s = await startStack(o, stack, workers);
    await runReady(o, s, shutdown);
    await stopped;
  } catch (err) {
    await shutdown('startup failed');
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
