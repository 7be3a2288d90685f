/**
 * `kiln dev`: the whole stack on one machine. Starts the Temporal dev server (persistent SQLite,
 * Web UI, Kiln's search attributes) unless server.address points at a cluster, starts and supervises
 * the workers (a dead one is restarted with backoff: seed 004's daemon stayed dead for 30 hours),
 * and on Ctrl-C / SIGTERM drains the workers, then stops the server. No process is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import type { Logger } from '../logger';
import { syncSchedules, syncSummary } from '../client/schedules';
import { resolveTemporalBinary } from '../temporal/binary';
import { connectClient, serverAddress } from '../temporal/connect';
import { startDevServer, stopProcessGroup, type DevServer } from '../temporal/devServer';
import { ensureSearchAttributes } from '../temporal/registerSearchAttributes';

export const KILN_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'kiln');

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

interface Supervised {
  name: string;
  args: string[];
  child: ChildProcess | null;
  restarts: number;
  startedAt: number;
  timer: NodeJS.Timeout | null;
}

export async function runDev(o: DevOptions): Promise<void> {
  const { config, log } = o;
  fs.mkdirSync(config.home, { recursive: true });
  let server: DevServer | undefined;
  let stopping = false;
  const workers: Supervised[] = [];
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => (resolveStopped = r));

  const shutdown = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'shutting down: draining workers, then the server');
    for (const w of workers) if (w.timer) clearTimeout(w.timer);
    const grace = config.timeouts.cancelGrace + 15_000;
    await Promise.all(workers.map((w) => (w.child ? stopProcessGroup(w.child, grace) : Promise.resolve())));
    log.info('workers stopped');
    if (server) {
      await server.stop(10_000);
      log.info('Temporal dev server stopped');
    }
    fs.rmSync(path.join(config.home, 'run', 'dev.json'), { force: true });
    resolveStopped();
  };
  const onSignal = (sig: NodeJS.Signals) => void shutdown(sig);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    let address = serverAddress(config);
    let uiUrl: string | undefined;
    if (!config.server.address) {
      const bin = resolveTemporalBinary({ cacheDir: path.join(config.home, 'bin'), log: (m) => log.info(m) });
      log.info({ version: bin.version, path: bin.path, route: bin.route }, 'Temporal CLI');
      server = await startDevServer({
        binary: bin.path,
        dbFile: path.resolve(config.home, config.dev.dbFile),
        ip: config.dev.ip,
        port: config.dev.port,
        uiPort: config.dev.uiPort,
        metricsPort: config.dev.metricsPort,
        namespace: config.server.namespace,
        logFile: path.join(config.home, 'logs', 'temporal-server.log'),
      });
      address = server.address;
      uiUrl = server.uiUrl;
      log.info({ address, db: path.resolve(config.home, config.dev.dbFile) }, 'Temporal dev server started');
    } else {
      log.info({ address }, 'using existing Temporal cluster (no local server started)');
    }
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
    fs.mkdirSync(path.join(config.home, 'run'), { recursive: true });
    fs.writeFileSync(path.join(config.home, 'run', 'dev.json'), JSON.stringify({ pid: process.pid, serverPid: server?.pid ?? null, address, uiUrl }));

    const env: NodeJS.ProcessEnv = { ...process.env, ...o.workerEnv, KILN_CONFIG: config.file, KILN_HOME: config.home, TEMPORAL_ADDRESS: address, KILN_PARENT_PID: String(process.pid) };
    const spawnWorker = (w: Supervised) => {
      // Own process group: a trainer's shim dies with its worker's group on shutdown escalation.
      const child = spawn(process.execPath, [KILN_BIN, ...w.args], { env, stdio: ['ignore', 'inherit', 'inherit'], detached: true });
      w.child = child;
      w.startedAt = Date.now();
      child.once('exit', (code, signal) => {
        w.child = null;
        if (stopping) return;
        // Backoff grows with quick crashes and resets after a minute of healthy running.
        if (Date.now() - w.startedAt > 60_000) w.restarts = 0;
        const delay = Math.min(30_000, 1000 * 2 ** w.restarts);
        w.restarts += 1;
        log.error({ worker: w.name, code, signal, restartInMs: delay, restarts: w.restarts }, 'worker died; restarting');
        w.timer = setTimeout(() => {
          w.timer = null;
          if (!stopping) spawnWorker(w);
        }, delay);
      });
    };
    workers.push({ name: 'control', args: ['worker', 'control'], child: null, restarts: 0, startedAt: 0, timer: null });
    for (const pool of Object.keys(config.workers.pools)) {
      workers.push({ name: `gpu-${pool}`, args: ['worker', 'gpu', '--pool', pool], child: null, restarts: 0, startedAt: 0, timer: null });
    }
    for (const w of workers) spawnWorker(w);
    log.info({ workers: workers.map((w) => ({ name: w.name, pid: w.child?.pid })) }, 'workers started');

    process.stdout.write(
      [
        '',
        `  Kiln is running.`,
        `  Temporal server:  ${address} (namespace ${config.server.namespace})`,
        uiUrl ? `  Web UI:           ${uiUrl}/namespaces/${config.server.namespace}/workflows` : '',
        `  State folder:     ${config.home}`,
        `  Stop with Ctrl-C.`,
        '',
      ]
        .filter((l) => l !== '')
        .join('\n') + '\n',
    );

    if (o.onReady) {
      try {
        await o.onReady({ address, uiUrl });
      } catch (err) {
        log.error({ err: (err as Error).message }, 'demo failed');
        process.exitCode = 1;
        if (o.exitAfterReady) await shutdown('demo failed');
      }
      if (o.exitAfterReady) await shutdown('demo finished');
    }
    await stopped;
  } catch (err) {
    await shutdown('startup failed');
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The processes a `kiln dev` started, for tests and `kiln doctor`. */
export function readDevPidfile(home: string): { pid: number; serverPid: number | null; address: string; uiUrl?: string } | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(home, 'run', 'dev.json'), 'utf8'));
  } catch {
    return null;
  }
}
