/**
 * Shared by the long chaos runs (test/chaos/, `npm run chaos`) and bench/load.ts: how many times to
 * repeat (CHAOS_N, default 10), where figures go (CHAOS_OUT, default .kiln/chaos/), and the attempt
 * headers Kiln writes to trainer.log.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { jobDir, REPO, type KilnTestEnv } from './kiln';
import { stats, type Stats } from '../../bench/stats';

export function chaosN(): number {
  const n = Number(process.env.CHAOS_N ?? 10);
  if (!Number.isInteger(n) || n < 1) throw new Error(`CHAOS_N must be a positive integer, got ${JSON.stringify(process.env.CHAOS_N)}`);
  return n;
}

export function chaosOutDir(): string {
  return path.resolve(process.env.CHAOS_OUT ?? path.join(REPO, '.kiln', 'chaos'));
}

export interface ChaosFile<Row> {
  fault: string;
  date: string;
  machine: string;
  command: string;
  n: number;
  rows: Row[];
  summary: Record<string, Stats>;
}

/** Writes <CHAOS_OUT>/<fault>.json with the rows and median/p95 of each numeric column. */
export function recordFigures<Row extends Record<string, unknown>>(fault: string, rows: Row[]): string {
  const summary: ChaosFile<Row>['summary'] = {};
  const keys = new Set(rows.flatMap((r) => Object.keys(r)));
  for (const k of keys) {
    const xs = rows.map((r) => r[k]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
    if (xs.length && k !== 'run') summary[k] = stats(xs);
  }
  const file: ChaosFile<Row> = {
    fault,
    date: new Date().toISOString(),
    machine: machine(),
    command: `CHAOS_N=${chaosN()} npm run chaos`,
    n: rows.length,
    rows,
    summary,
  };
  const dir = chaosOutDir();
  fs.mkdirSync(dir, { recursive: true });
  const out = path.join(dir, `${fault}.json`);
  fs.writeFileSync(out, JSON.stringify(file, null, 1));
  return out;
}

export function machine(): string {
  const cpus = os.cpus();
  return `${cpus.length} × ${cpus[0]?.model.trim() ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()}, Node ${process.version}`;
}

export interface AttemptHeader {
  attempt: number;
  worker: string;
  at: number;
  resumedFromStep: number | null;
}

/** `=== kiln: attempt N on <worker> at <ISO>[, resuming from step S (...)]` lines of a job's trainer.log. */
export function attemptHeaders(env: KilnTestEnv, jobId: string): AttemptHeader[] {
  return parseAttemptHeaders(readOr(path.join(jobDir(env, jobId), 'trainer.log')));
}

export function parseAttemptHeaders(log: string): AttemptHeader[] {
  const out: AttemptHeader[] = [];
  for (const m of log.matchAll(/^=== kiln: attempt (\d+) on (\S+) at (\S+?)(?:, resuming from step (\d+)[^;]*)?;/gm)) {
    out.push({ attempt: Number(m[1]), worker: m[2]!, at: Date.parse(m[3]!), resumedFromStep: m[4] ? Number(m[4]) : null });
  }
  return out;
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
