/**
 * Runs `temporal server start-dev` with a persistent SQLite file, the Web UI, and Kiln's search
 * attributes, and stops it cleanly (SIGTERM to its process group, SIGKILL after a grace period).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { KILN_SEARCH_ATTRIBUTES } from '../shared/searchAttributes';

export interface DevServerOptions {
  binary: string;
  dbFile: string;
  ip: string;
  port: number;
  uiPort: number;
  /** 0: no metrics endpoint. */
  metricsPort: number;
  namespace: string;
  /** Server stdout/stderr go here. */
  logFile: string;
  headless?: boolean;
  /** The server gets SIGTERM when the process that started it dies, even by SIGKILL (Linux). */
  dieWithParent?: boolean;
  /** Called as soon as the server process exists, before it is ready (so a caller can record it). */
  onSpawn?: (pid: number) => void;
  /** Aborting stops a server that is still starting; startDevServer then rejects. */
  signal?: AbortSignal;
}

export interface DevServer {
  readonly address: string;
  readonly uiUrl: string | undefined;
  readonly pid: number;
  readonly process: ChildProcess;
  /** True when it runs under the parent-death guard. */
  readonly guarded: boolean;
  stop(graceMs?: number): Promise<void>;
}

let pdeathsig: boolean | undefined;
/**
 * util-linux `setpriv --pdeathsig` sets prctl(PR_SET_PDEATHSIG) and execs the server, so the pid stays
 * the server's. The kernel sends the signal when the spawning thread dies (libuv spawns from the main
 * thread), whatever killed it. Absent (not Linux, no util-linux): the server runs unguarded.
 */
export function parentDeathGuardAvailable(): boolean {
  pdeathsig ??= spawnSync('setpriv', ['--pdeathsig', 'TERM', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
  return pdeathsig;
}

export function portInUse(ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: ip, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address() as net.AddressInfo;
      srv.close(() => resolve(addr.port));
    });
    srv.on('error', reject);
  });
}

/** Waits until the frontend answers a namespace describe. */
export async function waitForServer(address: string, namespace: string, timeoutMs: number, alive?: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    if (alive && !alive()) throw new Error('the Temporal dev server exited during startup');
    try {
      const conn = await Connection.connect({ address, connectTimeout: 2000 });
      try {
        await conn.workflowService.describeNamespace({ namespace });
        return;
      } finally {
        await conn.close();
      }
    } catch (err) {
      lastErr = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`Temporal server at ${address} did not become ready in ${timeoutMs} ms: ${String(lastErr)}`);
}

/** SIGTERM the group, wait, SIGKILL the group, wait for exit. */
export async function stopProcessGroup(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || !child.pid) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, sig);
    } catch {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    }
  };
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

export const devUiUrl = (ip: string, uiPort: number) => `http://${ip === '0.0.0.0' ? 'localhost' : ip}:${uiPort}`;

/**
 * A 10 s long poll (the server's default is a minute): an idle worker re-polls within it, so
 * `kiln doctor` can count as live only the pollers seen in the last 15 s.
 */
export const DEV_DYNAMIC_CONFIG = ['--dynamic-config-value', 'matching.longPollExpirationInterval="10s"'];

export async function startDevServer(o: DevServerOptions): Promise<DevServer> {
  if (await portInUse(o.ip, o.port)) {
    throw new Error(
      `port ${o.ip}:${o.port} is already in use: another Temporal server (or \`kiln dev\`) is running there. ` +
        'Stop it, set dev.port in temporal.yaml, or use it with TEMPORAL_ADDRESS=' + `${o.ip}:${o.port}`,
    );
  }
  fs.mkdirSync(path.dirname(o.dbFile), { recursive: true });
  fs.mkdirSync(path.dirname(o.logFile), { recursive: true });
  const args = [
    'server', 'start-dev',
    '--db-filename', o.dbFile,
    '--ip', o.ip,
    '--port', String(o.port),
    '--namespace', o.namespace,
    '--log-level', 'warn',
    ...KILN_SEARCH_ATTRIBUTES.flatMap((k) => ['--search-attribute', `${k.name}=Keyword`]),
    ...DEV_DYNAMIC_CONFIG,
  ];
  if (o.headless) args.push('--headless');
  else args.push('--ui-port', String(o.uiPort));
  if (o.metricsPort) args.push('--metrics-port', String(o.metricsPort));
  const log = fs.openSync(o.logFile, 'a');
  const guarded = o.dieWithParent === true && parentDeathGuardAvailable();
  const [cmd, ...argv] = guarded ? ['setpriv', '--pdeathsig', 'TERM', o.binary, ...args] : [o.binary, ...args];
  // Own process group, so stop() reaches the server and anything it forks.
  const child = spawn(cmd!, argv, { stdio: ['ignore', log, log], detached: true });
  fs.closeSync(log);
  const abort = () => void stopProcessGroup(child, 2000);
  o.signal?.addEventListener('abort', abort, { once: true });
  if (child.pid) o.onSpawn?.(child.pid);
  const address = `${o.ip}:${o.port}`;
  try {
    if (o.signal?.aborted) abort();
    await waitForServer(address, o.namespace, 60_000, () => child.exitCode === null && child.signalCode === null);
  } catch (err) {
    await stopProcessGroup(child, 2000);
    if (o.signal?.aborted) throw new Error('the Temporal dev server was stopped during startup');
    const tailText = fs.existsSync(o.logFile) ? fs.readFileSync(o.logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`${(err as Error).message}\n--- ${o.logFile} (tail) ---\n${tailText}`);
  } finally {
    o.signal?.removeEventListener('abort', abort);
  }
  return {
    address,
    uiUrl: o.headless ? undefined : devUiUrl(o.ip, o.uiPort),
    pid: child.pid!,
    process: child,
    guarded,
    stop: (graceMs = 10_000) => stopProcessGroup(child, graceMs),
  };
}
