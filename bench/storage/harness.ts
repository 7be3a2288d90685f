/**
 * What the storage benchmark (bench/storage.ts) shares: the config, GPU "hosts" (worker processes in
 * their own mount namespace with a private tmpfs at the state path, as test/fleet.test.ts starts them),
 * the trainer's records and the workers' JSON logs (both on the shared disk, outside the hosts' tmpfs),
 * a sampler of a host's checkpoint folder (through /proc/<pid>/root, which shows the host's mounts),
 * and a raw aws-sdk PUT of the same bytes, to tell the store's speed from Kiln's overhead.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeleteObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { REPO, waitFor, type GpuWorkerProc, type KilnTestEnv } from '../../test/helpers/kiln';
import type { MotoServer } from '../../test/helpers/moto';

export const FIXTURE = path.join(REPO, 'bench', 'fixtures', 'trainer.mjs');
export const BUCKET = 'kiln-bench';
export const HEARTBEAT_S = 5;
export const MiB = 2 ** 20;
/** Retention in the bench config: latest N + best K. */
export const KEEP_LATEST = 2;
export const KEEP_BEST = 1;
/** storage.partSize and storage.concurrency in the bench config (the defaults), also used by the raw PUT. */
export const PART_SIZE = 16 * MiB;
export const CONCURRENCY = 4;

export function configYaml(state: string, endpoint: string): string {
  return `version: 1
server:
  address: ""
workers:
  pools:
    gpu: { devices: auto, slots: 1, metricsPort: 0 }
  control: { metricsPort: 0 }
trainers:
  bench:
    command: [node, ${FIXTURE}]
    params:
      steps: { type: integer, min: 1, default: 100 }
      step_ms: { type: integer, min: 0, default: 50 }
      cpu_iters: { type: integer, min: 0, default: 0 }
      checkpoint_every: { type: integer, min: 1, default: 20 }
      ignore_sigterm: { type: boolean, default: false }
      ckpt_bytes: { type: integer, min: 0, default: 0 }
      record_steps: { type: boolean, default: false }
models:
  bench:
    trainer: bench
    dataset: synthetic://bench/v1
    pool: gpu
    gpus: 1
timeouts:
  heartbeat: ${HEARTBEAT_S}s
  stall: 10m
  cancelGrace: 30s
  maxAttempts: 10
retention:
  keepLatest: ${KEEP_LATEST}
  keepBest: ${KEEP_BEST}
artifacts:
  root: ${path.join(state, 'artifacts')}
storage:
  kind: s3
  bucket: ${BUCKET}
  prefix: bench
  endpoint: ${endpoint}
  forcePathStyle: true
  concurrency: ${CONCURRENCY}
  partSize: ${PART_SIZE / MiB}MiB
`;
}

export interface Rec {
  t: number;
  event: 'start' | 'step' | 'checkpoint' | 'sigterm' | 'exit';
  step: number;
  attempt: number;
  pid: number;
  job?: string;
  dur_ms?: number;
}

/** JSON lines of a file, skipping a line being written. */
function jsonLines<T>(file: string): T[] {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: T[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as T);
    } catch {
      /* a line being written */
    }
  }
  return out;
}

export interface LogLine {
  time: number;
  msg: string;
  jobId?: string;
  step?: number;
  ms?: number;
  bytes?: number;
  reused?: boolean;
  downloadedBytes?: number;
}

export class Hosts {
  live: GpuWorkerProc[] = [];
  readonly events: string;
  constructor(
    private readonly env: KilnTestEnv,
    private readonly moto: MotoServer,
    readonly state: string,
    private readonly tmpfsMiB: number,
  ) {
    this.events = path.join(env.home, 'bench-events.jsonl');
  }

  /** Starts hosts until `n` live ones. */
  async ensure(n: number): Promise<GpuWorkerProc[]> {
    this.live = this.live.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
    while (this.live.length < n) {
      this.live.push(
        await this.env.startGpuWorker({
          slots: 1,
          wrap: ['unshare', '-m', '--', 'sh', '-c', `mount -t tmpfs -o size=${this.tmpfsMiB}m kiln-host "$0" && exec "$@"`, this.state],
          env: { ...this.moto.env, KILN_HOME: this.state, KILN_BENCH_EVENTS: this.events },
        }),
      );
    }
    return this.live;
  }

  async kill(w: GpuWorkerProc): Promise<void> {
    w.kill('SIGKILL');
    await w.exited;
    this.live = this.live.filter((x) => x !== w);
  }

  async stopAll(): Promise<void> {
    for (const w of [...this.live]) await this.kill(w);
  }

  recs(jobId: string): Rec[] {
    return jsonLines<Rec>(this.events).filter((r) => r.job === jobId);
  }

  logs(w: GpuWorkerProc, jobId: string, msg: string): LogLine[] {
    return jsonLines<LogLine>(w.logFile).filter((l) => l.jobId === jobId && l.msg === msg);
  }

  /** The live host whose log shows a verified checkpoint of the job. */
  owner(jobId: string): GpuWorkerProc | undefined {
    return this.live.find((w) => this.logs(w, jobId, VERIFIED).length > 0);
  }

  /** A job's checkpoint folder as the host sees it. */
  checkpointDir(w: GpuWorkerProc, jobId: string): string {
    return path.join(`/proc/${w.pid}/root`, this.state, 'artifacts', 'jobs', jobId, 'checkpoints');
  }
}

export const VERIFIED = 'checkpoint uploaded and verified';
export const DOWNLOADED = ['downloaded the resume checkpoint from storage', 'resume checkpoint already here with matching checksums'];

export async function waitRec(hosts: Hosts, jobId: string, pred: (r: Rec) => boolean, timeoutMs: number, what: string): Promise<Rec> {
  return waitFor(() => hosts.recs(jobId).find(pred), timeoutMs, what, 10);
}

/** Bytes under a folder (files being written included); 0 when it is absent. */
export function bytesUnder(dir: string): number {
  let n = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) n += bytesUnder(p);
    else n += fs.statSync(p, { throwIfNoEntry: false })?.size ?? 0;
  }
  return n;
}

/** Samples a folder's size every `intervalMs` (setInterval in this process) until stopped. */
export class DiskSampler {
  max = 0;
  samples = 0;
  private readonly timer: NodeJS.Timeout;
  constructor(dir: () => string | null, intervalMs: number) {
    this.timer = setInterval(() => {
      const d = dir();
      if (!d) return;
      this.max = Math.max(this.max, bytesUnder(d));
      this.samples += 1;
    }, intervalMs);
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

/** Raw aws-sdk upload of `bytes` random bytes from tmpfs (/dev/shm, as the hosts' checkpoints), the same part size and concurrency as Kiln: ms per run. */
export async function rawPutMs(moto: MotoServer, bytes: number, runs: number): Promise<number[]> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'kiln-bench-raw-'));
  const file = path.join(dir, 'raw.bin');
  const client = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' }, requestChecksumCalculation: 'WHEN_REQUIRED' });
  try {
    const pad = crypto.randomBytes(Math.min(bytes, 16 * MiB));
    const fd = fs.openSync(file, 'w');
    for (let left = bytes; left > 0; left -= pad.length) fs.writeSync(fd, pad, 0, Math.min(left, pad.length));
    fs.closeSync(fd);
    const out: number[] = [];
    for (let i = 0; i < runs; i++) {
      const Key = `raw/${i}.bin`;
      const t0 = Date.now();
      await new Upload({ client, params: { Bucket: BUCKET, Key, Body: fs.createReadStream(file), ContentLength: bytes }, partSize: PART_SIZE, queueSize: CONCURRENCY }).done();
      out.push(Date.now() - t0);
      await client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }));
    }
    return out;
  } finally {
    client.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function motoVersion(): string {
  const r = spawnSync('python3', ['-c', 'import moto; print(moto.__version__)'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

export function gitCommit(): string {
  const r = spawnSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  const dirty = spawnSync('git', ['-C', REPO, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).stdout.trim();
  return r.status === 0 ? `${r.stdout.trim()}${dirty ? ' (with uncommitted changes)' : ''}` : 'unknown';
}

/** The trainer fixture's cpuWork loop, timed here (after a warm-up pass): iterations for a step of about `ms` on this machine now. */
export function calibrateCpuIters(ms: number): number {
  const n = 2_000_000;
  let dt = 0;
  let x = 0;
  for (let pass = 0; pass < 2; pass++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) x = Math.sin(x + i) * 0.5 + Math.sqrt(i + 1) * 1e-9;
    dt = performance.now() - t0;
  }
  if (Number.isNaN(x)) throw new Error('unreachable');
  return Math.max(1000, Math.round((n * ms) / dt));
}

export const mib = (b: number): string => `${(b / MiB).toFixed(0)} MiB`;
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
