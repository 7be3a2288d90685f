/**
 * The dev server `kiln dev` owns: recorded in run/dev.json the moment it is spawned (pid and start
 * time), started under a parent-death guard, restarted with backoff when it dies, and, when a
 * previous `kiln dev` died and left one running on this state folder, stopped before a new one starts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { Logger } from '../logger';
import { isSameProcess, processStartTime } from '../supervisor/proc';
import { startDevServer, type DevServer, type DevServerOptions } from '../temporal/devServer';
import { RestartBackoff } from './backoff';

const DevRecordSchema = z.object({
  /** The `kiln dev` process. */
  pid: z.number().int(),
  pidStart: z.number().nullable(),
  /** Null when server.address names a cluster (no local server). */
  serverPid: z.number().int().nullable(),
  serverStart: z.number().nullable(),
  dbFile: z.string().nullable(),
  address: z.string(),
  uiUrl: z.string().optional(),
});
export type DevRecord = z.infer<typeof DevRecordSchema>;

export const devRecordFile = (home: string) => path.join(home, 'run', 'dev.json');

export function readDevRecord(home: string): DevRecord | null {
  try {
    return DevRecordSchema.parse(JSON.parse(fs.readFileSync(devRecordFile(home), 'utf8')));
  } catch {
    return null;
  }
}

export function writeDevRecord(home: string, r: DevRecord): void {
  const file = devRecordFile(home);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(r));
  fs.renameSync(`${file}.tmp`, file);
}

/** Only this process's record: one naming an orphan not yet dealt with must stay. */
export function removeDevRecord(home: string): void {
  if (readDevRecord(home)?.pid === process.pid) fs.rmSync(devRecordFile(home), { force: true });
}

/** True only for that very process (pid + start time) running `start-dev` on this SQLite file. */
export function isDevServerOf(pid: number, start: number | null, dbFile: string): boolean {
  if (!isSameProcess(pid, start)) return false;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('--db-filename');
    return argv.includes('start-dev') && i >= 0 && argv[i + 1] === dbFile;
  } catch {
    return false;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

async function waitGone(pid: number, start: number | null, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isSameProcess(pid, start)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return !isSameProcess(pid, start);
}

/**
 * Called with the state folder locked, so a recorded server is an orphan: its `kiln dev` is gone.
 * The record is removed only once the orphan is dealt with (it is the only note of its pid).
 */
export async function stopOrphanServer(home: string, dbFile: string, log: Logger): Promise<void> {
  const rec = readDevRecord(home);
  if (rec?.serverPid) {
    const { serverPid: pid, serverStart: start } = rec;
    // The recorded SQLite file (dev.dbFile may have changed since), else this run's.
    if (isDevServerOf(pid, start, rec.dbFile ?? dbFile)) {
      log.warn({ pid, address: rec.address, deadKilnDev: rec.pid }, 'found an orphaned Temporal dev server of this state folder (its kiln dev died); stopping it');
      const t0 = Date.now();
      signal(pid, 'SIGTERM');
      if (!(await waitGone(pid, start, 10_000))) {
        signal(pid, 'SIGKILL');
        await waitGone(pid, start, 5000);
      }
      log.warn({ pid, ms: Date.now() - t0 }, 'stopped the orphaned Temporal dev server');
    } else if (processStartTime(pid) !== null) {
      log.info({ pid }, 'the recorded dev server pid is now another process (not a dev server of this state folder); left alone');
    }
  }
  fs.rmSync(devRecordFile(home), { force: true });
}

/** Runs the dev server and restarts it with backoff when it dies, until halted. */
export class ServerKeeper {
  current: DevServer | undefined;
  private halted = false;
  private readonly abort = new AbortController();
  private readonly backoff = new RestartBackoff();
  private startedAt = 0;
  private timer: NodeJS.Timeout | null = null;
  private launching: Promise<unknown> | null = null;

  constructor(
    private readonly opts: DevServerOptions,
    private readonly log: Logger,
    /** Each new server process, as soon as it exists. */
    private readonly onSpawn: (pid: number) => void,
  ) {}

  /** The first start; rejects when it fails or when halted meanwhile. */
  start(): Promise<DevServer> {
    return this.launch();
  }

  private launch(): Promise<DevServer> {
    const p = (async () => {
      const server = await startDevServer({ ...this.opts, dieWithParent: true, signal: this.abort.signal, onSpawn: this.onSpawn });
      if (this.halted) {
        await server.stop(5000);
        throw new Error('stopped during startup');
      }
      this.current = server;
      this.startedAt = Date.now();
      server.process.once('exit', (code, signal) => this.died(server, code, signal));
      if (server.process.exitCode !== null || server.process.signalCode !== null) this.died(server, server.process.exitCode, server.process.signalCode);
      return server;
    })();
    this.launching = p.finally(() => (this.launching = null)).catch(() => undefined);
    return p;
  }

  private died(server: DevServer, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.current !== server) return;
    this.current = undefined;
    if (this.halted) return;
    this.scheduleRestart(Date.now() - this.startedAt, { code, signal });
  }

  private scheduleRestart(uptimeMs: number, why: Record<string, unknown>): void {
    const { delayMs, restarts } = this.backoff.next(uptimeMs);
    this.log.error({ ...why, restartInMs: delayMs, restarts }, 'Temporal dev server died; restarting');
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.halted) return;
      const t0 = Date.now();
      this.launch().then(
        (s) => this.log.info({ pid: s.pid, address: s.address, ms: Date.now() - t0 }, 'Temporal dev server restarted'),
        (err: Error) => {
          if (!this.halted) this.scheduleRestart(0, { err: err.message.split('\n')[0] });
        },
      );
    }, delayMs);
  }

  /** No more restarts; a server still starting is stopped. Synchronous, so a signal handler can call it. */
  halt(): void {
    this.halted = true;
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
  }

  /** Halts, then stops the running server. True when there was one to stop. */
  async stop(graceMs: number): Promise<boolean> {
    this.halt();
    await this.launching;
    const s = this.current;
    this.current = undefined;
    if (!s) return false;
    await s.stop(graceMs);
    return true;
  }
}
