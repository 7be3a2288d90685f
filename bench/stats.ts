/**
 * Benchmark statistics and /proc sampling, shared by bench/*.ts and the chaos suites' figures
 * (test/helpers/chaos.ts). Node and Linux only; no Temporal, no Kiln.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

export interface Stats {
  n: number;
  median: number;
  p95: number;
  min: number;
  max: number;
}

/** Nearest rank, p in 0..100: with 10 samples p95 is the largest one. NaN when there are none. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i]!;
}

/** The middle sample, or the mean of the two middle ones. NaN when there are none. */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The nearest-rank median: always one of the samples (bench/schedules reports this one). */
export const p50 = (xs: number[]): number => percentile(xs, 50);

/** n, median (by `mid`, default the interpolated one), nearest-rank p95, min, max. */
export function stats(xs: number[], mid: (xs: number[]) => number = median): Stats {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, median: mid(xs), p95: percentile(xs, 95), min: s[0]!, max: s[s.length - 1]! };
}

/** The 1-, 5- and 15-minute load averages, e.g. "3.19 7.43 6.80". */
export const loadavg = (): string =>
  os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

// ---------------------------------------------------------------------------------------------
// /proc

function statFields(pid: number): string[] | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Gone or a zombie: the process no longer runs. */
export function exited(pid: number): boolean {
  const f = statFields(pid);
  return f === null || f[0]!.startsWith('Z');
}

/** utime + stime of a process in ms (clock ticks of 10 ms); NaN when it is gone. */
export function cpuMsOf(pid: number): number {
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) * 10 : NaN;
}

/** Busy CPU ms of the whole machine, all cores (from /proc/stat). */
export function machineBusyMs(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f as number[];
  return (user + nice + system + irq + softirq + steal) * 10;
}

/** VmRSS of a process in KiB, or null. */
export function rssKiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Unique set size in KiB: private pages only, what the process frees when it exits (RSS counts shared ones). */
export function ussKiB(pid: number): number | null {
  try {
    const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const get = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(t)?.[1] ?? NaN);
    return get('Private_Clean') + get('Private_Dirty');
  } catch {
    return null;
  }
}

/** Direct children of a pid (from /proc/<pid>/task/<pid>/children). */
export function childrenOf(pid: number): number[] {
  try {
    return fs
      .readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Max and last VmRSS of named processes, sampled every `intervalMs` until stopped. */
export class RssSampler {
  readonly kib: Record<string, { start: number; max: number; end: number }> = {};
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly procs: Array<{ name: string; pid: number }>,
    intervalMs: number,
    /** Called on every tick too, for what else the caller samples at the same rate. */
    onTick: () => void = () => undefined,
  ) {
    for (const p of procs) {
      const v = rssKiB(p.pid) ?? 0;
      this.kib[p.name] = { start: v, max: v, end: v };
    }
    this.timer = setInterval(() => {
      onTick();
      this.sample();
    }, intervalMs);
  }

  private sample(): void {
    for (const p of this.procs) {
      const v = rssKiB(p.pid);
      if (v === null) continue;
      const k = this.kib[p.name]!;
      k.max = Math.max(k.max, v);
      k.end = v;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
