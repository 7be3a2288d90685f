/**
 * The storage figures (issue 12), each measured through Kiln's own path: the bench trainer writes
 * checkpoints of the given size into KILN_CHECKPOINT_DIR on a host's private tmpfs and announces them;
 * the GPU worker uploads them (activities/train/upload.ts) and logs each verified one with its upload
 * time. "Announced" is the trainer's record right after it emitted the event; "verified" is the time
 * of the worker's `checkpoint uploaded and verified` log line (same host clock).
 */
import type { WorkflowHandle } from '@temporalio/client';
import { cancelSignal } from '../../src/shared/messages';
import { waitFor, type KilnTestEnv } from '../../test/helpers/kiln';
import type { MotoServer } from '../../test/helpers/moto';
import { ms } from '../report';
import { cpuMsOf, loadavg as load, median, stats } from '../stats';
import { calibrateCpuIters, DiskSampler, DOWNLOADED, HEARTBEAT_S, KEEP_BEST, KEEP_LATEST, MiB, mib, rawPutMs, sleep, VERIFIED, waitRec, type Hosts } from './harness';

export type Raw = Record<string, unknown>;
const row = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;
const range = (xs: number[]) => {
  if (!xs.length) return ['–', '–', '–', '–'];
  const s = stats(xs);
  return [ms(s.median), ms(s.p95), ms(s.min), ms(s.max)];
};

async function cancelAndWait(h: WorkflowHandle, timeoutMs = 180_000): Promise<void> {
  await h.signal(cancelSignal, { reason: 'bench' }).catch(() => undefined);
  await Promise.race([h.result().catch(() => undefined), sleep(timeoutMs)]);
}

interface VerifySample {
  step: number;
  /** announced → verified. */
  total: number;
  /** uploadCheckpoint's own time (hash, files, manifest, marker), from the log line. */
  upload: number;
}

/** One job per size: `runs` checkpoints spaced so each upload finishes before the next is announced. */
async function verifySamples(env: KilnTestEnv, hosts: Hosts, bytes: number, runs: number): Promise<VerifySample[]> {
  const [host] = await hosts.ensure(1);
  // 3 s + the upload at 30 MB/s: room for a slow store, so no checkpoint waits in the queue.
  const every = Math.ceil((3000 + (bytes / 30e6) * 1000) / 50);
  const h = await env.submit('bench', { params: { steps: every * runs, step_ms: 50, checkpoint_every: every, ckpt_bytes: bytes } });
  await h.result();
  const recs = hosts.recs(h.workflowId).filter((r) => r.event === 'checkpoint');
  const logs = hosts.logs(host!, h.workflowId, VERIFIED);
  const out: VerifySample[] = [];
  for (const r of recs) {
    const l = logs.find((x) => x.step === r.step);
    if (!l) throw new Error(`checkpoint step ${r.step} of ${h.workflowId} was announced but never verified (see ${host!.logFile})`);
    out.push({ step: r.step, total: l.time - r.t, upload: l.ms ?? NaN });
  }
  return out;
}

/** checkpoint announced → verified, per size, next to moto's raw PUT of the same bytes. */
export async function verifyTable(env: KilnTestEnv, hosts: Hosts, moto: MotoServer, sizesMiB: number[], runs: number, raw: Raw): Promise<string[]> {
  const md = [
    '| checkpoint | runs | announced → verified median | p95 | min | max | of which upload (median) | Kiln MiB/s | raw aws-sdk PUT to moto (median) | raw MiB/s | target | verdict |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  raw.verify = {};
  for (const size of sizesMiB) {
    const bytes = size * MiB;
    const s = await verifySamples(env, hosts, bytes, runs);
    const put = await rawPutMs(moto, bytes, runs);
    (raw.verify as Raw)[`${size}MiB`] = { samples: s, rawPutMs: put };
    const total = s.map((x) => x.total);
    const rate = (t: number) => (t > 0 ? (bytes / MiB / (t / 1000)).toFixed(0) : '–');
    const target = size >= 1024 ? '< 10 s' : 'report';
    const verdict = size >= 1024 ? (stats(total).max < 10_000 ? 'met' : '**not met**') : '–';
    md.push(row([mib(bytes), s.length, ...range(total), ms(median(s.map((x) => x.upload))), rate(median(total)), ms(median(put)), rate(median(put)), target, verdict]));
    console.error(`  verify ${mib(bytes)}: ${total.map((t) => ms(t)).join(', ')}; raw PUT ${put.map((t) => ms(t)).join(', ')} (load ${load()})`);
  }
  md.push('', '"of which upload" is uploadCheckpoint itself (sha256 of the files, the PUTs, manifest, marker); the rest is announcement → queue → start and the log write. Raw PUT: the same bytes from tmpfs with @aws-sdk/lib-storage, the same part size and concurrency, no hashing, no manifest: what moto itself takes.', '');
  return md;
}

interface OverlapResult {
  inside: number[];
  outside: number[];
  maxDisk: number;
  diskSamples: number;
  uploads: number;
  ckptBytes: number;
  cpuIters: number;
  every: number;
  motoCpuMs: number;
  workerCpuMs: number;
}

/** Steps overlapping no upload window vs inside one; the host's checkpoint folder sampled every 75 ms. */
export interface OverlapOptions {
  bytes: number;
  checkpoints: number;
  stepMs: number;
  /** Steps between checkpoints; default: about two uploads' time. */
  every?: number;
}

async function overlapRun(env: KilnTestEnv, hosts: Hosts, moto: MotoServer, o: OverlapOptions): Promise<OverlapResult> {
  const [host] = await hosts.ensure(1);
  const cpuIters = calibrateCpuIters(o.stepMs);
  // A checkpoint every ~2 uploads' time (the raw PUT, measured now): about half the steps overlap an upload.
  const put = median(await rawPutMs(moto, o.bytes, 1));
  const every = o.every ?? Math.max(10, Math.ceil((2 * put + 1000) / o.stepMs));
  let jobId = '';
  const sampler = new DiskSampler(() => (jobId ? hosts.checkpointDir(host!, jobId) : null), 75);
  const cpu0 = { moto: cpuMsOf(moto.pid), worker: cpuMsOf(host!.pid) };
  let h: WorkflowHandle;
  try {
    h = await env.submit('bench', { params: { steps: every * o.checkpoints, cpu_iters: cpuIters, checkpoint_every: every, ckpt_bytes: o.bytes, record_steps: true } });
    jobId = h.workflowId;
    await h.result();
  } finally {
    sampler.stop();
  }
  const cpu = { moto: cpuMsOf(moto.pid) - cpu0.moto, worker: cpuMsOf(host!.pid) - cpu0.worker };
  const windows = hosts.logs(host!, jobId, VERIFIED).map((l) => [l.time - (l.ms ?? 0), l.time] as const);
  const steps = hosts.recs(jobId).filter((r) => r.event === 'step' && r.dur_ms !== undefined && r.step > 3);
  const inside: number[] = [];
  const outside: number[] = [];
  for (const r of steps) {
    const a = r.t - r.dur_ms!;
    if (windows.some(([s, e]) => a >= s && r.t <= e)) inside.push(r.dur_ms!);
    else if (!windows.some(([s, e]) => r.t >= s && a <= e)) outside.push(r.dur_ms!);
  }
  return { inside, outside, maxDisk: sampler.max, diskSamples: sampler.samples, uploads: windows.length, ckptBytes: o.bytes, cpuIters, every, motoCpuMs: cpu.moto, workerCpuMs: cpu.worker };
}

/** Trainer step time while uploading vs not (same run), and the host's local checkpoint disk use. */
export async function overlapTable(env: KilnTestEnv, hosts: Hosts, moto: MotoServer, o: OverlapOptions, raw: Raw): Promise<string[]> {
  const r = await overlapRun(env, hosts, moto, o);
  raw.overlap = r;
  const mi = median(r.inside);
  const mo = median(r.outside);
  const ratio = mi / mo;
  const limit = KEEP_LATEST + KEEP_BEST + 1;
  const inCkpts = r.maxDisk / r.ckptBytes;
  console.error(`  overlap: ${r.inside.length} steps uploading (median ${mi.toFixed(1)} ms), ${r.outside.length} not (median ${mo.toFixed(1)} ms); max disk ${mib(r.maxDisk)} (load ${load()})`);
  return [
    '| figure | samples | value | target | verdict |',
    '|---|---|---|---|---|',
    row(['trainer step time while uploading / not (medians, same run)', `${r.inside.length} / ${r.outside.length} steps`, `${Number.isFinite(ratio) ? ratio.toFixed(3) : '–'} (${mi.toFixed(1)} ms / ${mo.toFixed(1)} ms)`, 'ratio ≤ 1.02', Number.isFinite(ratio) ? (ratio <= 1.02 ? 'met' : '**not met**') : 'no samples']),
    row(['local disk used by checkpoints on the GPU host (max)', `${r.diskSamples} samples / 75 ms`, `${mib(r.maxDisk)} = ${inCkpts.toFixed(2)} checkpoints`, `≤ N + K + 1 = ${limit} checkpoints`, inCkpts <= limit ? 'met' : '**not met**']),
    '',
    `One job, ${o.checkpoints} checkpoints of ${mib(r.ckptBytes)} every ${r.every} steps, ${r.uploads} uploads; retention keepLatest ${KEEP_LATEST}, keepBest ${KEEP_BEST}. Each step is a fixed amount of CPU work (${r.cpuIters} iterations of the fixture's cpuWork, ~${o.stepMs} ms when calibrated at start): a CPU-busy step is the honest one, since what an upload can take from training is CPU (hashing, the SDK, here also moto), memory bandwidth and disk; a sleeping step would hide all of that and measure only timer latency. A step counts as "uploading" when it lies wholly inside an upload window (uploadCheckpoint's start to its verified log line), "not" when it overlaps none; steps straddling an edge are left out; checkpoint writes are outside every step's timing. CPU used during the job: moto ${ms(r.motoCpuMs)}, GPU worker ${ms(r.workerCpuMs)} (on the quiet machine moto shares the cores with the trainer, which a remote store would not). Disk: bytes under the job's checkpoint folder as the host sees it (/proc/<worker pid>/root), partial files included.`,
    '',
  ];
}

interface KillSample {
  firstStep: number;
  /** kill → the download of the resume checkpoint began (detection, scheduling, fence, verification). */
  toDownload: number;
  download: number;
  /** kill → the new trainer's start record. */
  started: number;
  reused: boolean;
  resumedFrom: number;
  firstResumedStep: number;
}

/** Host A dies (SIGKILL) after a verified checkpoint; host B downloads it and resumes. */
async function killOnce(env: KilnTestEnv, hosts: Hosts, bytes: number): Promise<KillSample> {
  const [a0, b0] = await hosts.ensure(2);
  const h = await env.submit('bench', { params: { steps: 1_000_000, step_ms: 50, checkpoint_every: 40, ckpt_bytes: bytes, record_steps: true } });
  const jobId = h.workflowId;
  try {
    const victim = await waitFor(() => hosts.owner(jobId), 120_000, 'a verified checkpoint on the owning host');
    const other = victim === a0 ? b0! : a0!;
    await sleep(500 + Math.random() * 1500);
    const t0 = Date.now();
    await hosts.kill(victim);
    const first = await waitRec(hosts, jobId, (r) => r.event === 'step' && r.attempt >= 2, 180_000, 'the first resumed step on the other host');
    const started = hosts.recs(jobId).find((r) => r.event === 'start' && r.attempt === first.attempt)!;
    const dl = hosts.logs(other, jobId, DOWNLOADED[0]!).concat(hosts.logs(other, jobId, DOWNLOADED[1]!))[0];
    if (!dl) throw new Error(`no download of the resume checkpoint in ${other.logFile}`);
    if (first.step !== started.step + 1) throw new Error(`resumed from ${started.step} but the first step was ${first.step}`);
    const dlMs = dl.ms ?? NaN;
    return { firstStep: first.t - t0, toDownload: dl.time - dlMs - t0, download: dlMs, started: started.t - t0, reused: !!dl.reused, resumedFrom: started.step, firstResumedStep: first.step };
  } finally {
    await cancelAndWait(h);
  }
}

/** Cross-host worker SIGKILL → first resumed step. */
export async function sigkillTable(env: KilnTestEnv, hosts: Hosts, bytes: number, runs: number, raw: Raw): Promise<string[]> {
  const s: KillSample[] = [];
  for (let i = 0; i < runs; i++) {
    const k = await killOnce(env, hosts, bytes);
    s.push(k);
    console.error(`  sigkill ${i + 1}/${runs}: first resumed step ${ms(k.firstStep)}, download ${ms(k.download)}, resumed from ${k.resumedFrom} (load ${load()})`);
  }
  raw.sigkill = s;
  const met = s.every((x) => x.firstStep <= HEARTBEAT_S * 1000 + x.download + 2000);
  return [
    '| figure | runs | median | p95 | min | max | target | verdict |',
    '|---|---|---|---|---|---|---|---|',
    row(['cross-host worker SIGKILL → first resumed step', s.length, ...range(s.map((x) => x.firstStep)), `≤ heartbeat ${HEARTBEAT_S} s + download + 2 s (each run)`, s.length ? (met ? 'met' : '**not met**') : 'no samples']),
    row(['kill → download of the resume checkpoint begins (info)', s.length, ...range(s.map((x) => x.toDownload)), '–', '–']),
    row([`download of the ${mib(bytes)} resume checkpoint (info)`, s.length, ...range(s.map((x) => x.download)), '–', '–']),
    row(['kill → new trainer started (info)', s.length, ...range(s.map((x) => x.started)), '–', '–']),
    row(['minus heartbeat and download: detection slack + start (info)', s.length, ...range(s.map((x) => x.firstStep - x.download - HEARTBEAT_S * 1000)), '≤ 2 s', '–']),
    '',
    `Two GPU hosts (own mount namespaces, private tmpfs at the same state path), one owning the job, the other idle; SIGKILL 0.5–2 s after the owner logged a verified checkpoint. The first resumed step is the trainer's record on the other host; the download time is that host's log line for the resume checkpoint. Resume checkpoint + 1 = first step in every run.${s.some((x) => x.reused) ? ' Some runs found the checkpoint already cached.' : ''}`,
    '',
  ];
}
