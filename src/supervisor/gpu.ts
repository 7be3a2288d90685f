/**
 * GPU slots of a pool worker: which device ids exist, who holds them, and nvidia-smi telemetry.
 * With no nvidia-smi, a pool runs on CPU slots and telemetry is null; nothing fails.
 */
import { execFile } from 'node:child_process';
import type { GpuTelemetry } from '../shared/progress';

function runNvidiaSmi(args: string[], timeoutMs = 5000): Promise<string | null> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout) => resolve(err ? null : stdout));
  });
}

/** Device ids from `nvidia-smi --query-gpu=index`, or [] when there is no GPU or no nvidia-smi. */
export async function detectGpus(): Promise<string[]> {
  const out = await runNvidiaSmi(['--query-gpu=index', '--format=csv,noheader']);
  if (!out) return [];
  return out.split('\n').map((l) => l.trim()).filter((l) => /^\d+$/.test(l));
}

const num = (s: string | undefined): number | undefined => {
  const n = Number(String(s ?? '').trim());
  return s !== undefined && String(s).trim() !== '' && Number.isFinite(n) ? n : undefined;
};

/** Telemetry for the given device ids, or null without nvidia-smi. */
export async function sampleGpus(ids: string[]): Promise<GpuTelemetry[] | null> {
  if (ids.length === 0) return null;
  const out = await runNvidiaSmi(['--query-gpu=index,name,utilization.gpu,memory.used,memory.total', '--format=csv,noheader,nounits']);
  if (!out) return null;
  const rows: GpuTelemetry[] = [];
  for (const line of out.split('\n')) {
    const [index, name, util, used, total] = line.split(',').map((s) => s.trim());
    if (!index || !ids.includes(index)) continue;
    rows.push({ index, name, utilizationPct: num(util), memoryUsedMiB: num(used), memoryTotalMiB: num(total) });
  }
  return rows;
}

/**
 * Leases distinct device ids to concurrent attempts on one worker. The worker's
 * maxConcurrentActivityTaskExecutions equals `slots`, so a job beyond capacity waits in the task
 * queue, not here; a multi-GPU job that finds too few free ids waits here until they free up.
 */
export class GpuLeases {
  private readonly held = new Map<string, string>();
  constructor(
    /** Device ids; empty on a CPU-only pool. */
    readonly devices: readonly string[],
    /** Concurrent jobs this worker accepts. */
    readonly slots: number,
  ) {}

  free(): string[] {
    return this.devices.filter((d) => !this.held.has(d));
  }

  /** Returns the leased ids, or null if not enough are free right now. */
  tryLease(owner: string, count: number): string[] | null {
    if (this.devices.length === 0 || count === 0) return [];
    if (count > this.devices.length) throw new Error(`this pool has ${this.devices.length} GPU(s), the job asks for ${count}`);
    const free = this.free();
    if (free.length < count) return null;
    const ids = free.slice(0, count);
    for (const id of ids) this.held.set(id, owner);
    return ids;
  }

  release(owner: string): void {
    for (const [id, o] of this.held) if (o === owner) this.held.delete(id);
  }
}
