/**
 * Storage benchmarks (issue 12): checkpoints in object storage, against a real moto S3 server this
 * bench starts (test/helpers/moto.ts), a real Temporal dev server, and real GPU worker processes, each
 * a "host" in its own mount namespace with a private tmpfs at the same state path (needs root and
 * `unshare -m`, as test/fleet.test.ts).
 *
 *   node dist/bench/storage.js [--sizes 16,256,1024] [--runs 5] [--overlap-mib 256] [--overlap-checkpoints 8]
 *                              [--overlap-every STEPS] [--step-ms 50] [--kill-mib 256] [--only verify,overlap,sigkill] [--json FILE]
 *
 *   verify   checkpoint announced → verified for each size in --sizes (MiB), --runs checkpoints each,
 *            next to moto's own raw PUT throughput for the same bytes (aws-sdk, no Kiln).
 *   overlap  one job with CPU-busy fixed-cost steps (~--step-ms) and --overlap-checkpoints checkpoints of
 *            --overlap-mib (one every --overlap-every steps; default about two uploads' time): step time while
 *            uploading vs not, and the host's local checkpoint disk use sampled every 75 ms.
 *   sigkill  the owning host SIGKILLed after a verified --kill-mib checkpoint → first resumed step on the
 *            other host (--runs times), with the download time of the resume checkpoint.
 *
 * Prints a markdown table to stdout (progress on stderr); writes nothing to BENCHMARKS.md. Smoke run:
 * `node dist/bench/storage.js --sizes 16 --runs 1 --overlap-mib 16 --overlap-checkpoints 3 --kill-mib 16`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { startKilnEnv } from '../test/helpers/kiln';
import { motoCommand, startMoto } from '../test/helpers/moto';
import { isAlive } from '../src/supervisor/proc';
import { loadavg as load } from './stats';
import { BUCKET, configYaml, gitCommit, Hosts, KEEP_BEST, KEEP_LATEST, MiB, motoVersion } from './storage/harness';
import { overlapTable, sigkillTable, verifyTable, type Raw } from './storage/figures';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const FIGURES = ['verify', 'overlap', 'sigkill'];

function options() {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '16,256,1024' },
      runs: { type: 'string', default: '5' },
      'overlap-mib': { type: 'string', default: '256' },
      'overlap-checkpoints': { type: 'string', default: '8' },
      'overlap-every': { type: 'string' },
      'step-ms': { type: 'string', default: '50' },
      'kill-mib': { type: 'string', default: '256' },
      only: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const int = (name: string, v: string, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} ${v}: a whole number ≥ ${min}`);
    return n;
  };
  const only = values.only ? values.only.split(',') : FIGURES;
  for (const f of only) if (!FIGURES.includes(f)) throw new Error(`--only ${f}: unknown figure (one of ${FIGURES.join(', ')})`);
  return {
    sizes: values.sizes.split(',').map((s) => int('sizes', s, 1)),
    runs: int('runs', values.runs, 1),
    overlapMiB: int('overlap-mib', values['overlap-mib'], 1),
    overlapCheckpoints: int('overlap-checkpoints', values['overlap-checkpoints'], 2),
    overlapEvery: values['overlap-every'] === undefined ? undefined : int('overlap-every', values['overlap-every'], 1),
    stepMs: int('step-ms', values['step-ms'], 5),
    killMiB: int('kill-mib', values['kill-mib'], 1),
    only,
    json: values.json,
  };
}

function preflight(): void {
  if (!motoCommand()) throw new Error("moto_server not found: pip install 'moto[server]' (.ci/run installs it)");
  if (spawnSync('unshare', ['-m', 'true'], { stdio: 'ignore' }).status !== 0) throw new Error('unshare -m is not permitted here (run as root): the bench needs separate hosts');
}

function header(o: ReturnType<typeof options>, before: string): string[] {
  const cpu = os.cpus();
  return [
    '| machine | date | commit | command | load before | moto |',
    '|---|---|---|---|---|---|',
    `| ${os.hostname()}: ${cpu.length} × ${cpu[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version} | ${new Date().toISOString()} | ${gitCommit()} | \`node dist/bench/storage.js ${process.argv.slice(2).join(' ')}\` | ${before} | moto_server ${motoVersion()} on 127.0.0.1 (same machine) |`,
    '',
    `Config: heartbeat timeout 5 s, storage.concurrency 4, partSize 16 MiB, retention keepLatest ${KEEP_LATEST} + keepBest ${KEEP_BEST}; figures: ${o.only.join(', ')}.`,
    '',
  ];
}

async function main(): Promise<void> {
  const o = options();
  preflight();
  const before = load();
  const md = header(o, before);
  const raw: Raw = { date: new Date().toISOString(), options: o, loadBefore: before };
  const moto = await startMoto();
  // The control worker (this process) reaches the bucket with moto's test credentials.
  for (const [k, v] of Object.entries(moto.env)) process.env[k] ??= v;
  const admin = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
  await admin.send(new CreateBucketCommand({ Bucket: BUCKET }));
  admin.destroy();
  const env = await startKilnEnv();
  const state = path.join(env.home, 'state');
  fs.mkdirSync(state);
  env.writeConfig(configYaml(state, moto.endpoint));
  // Room for retention's checkpoints, one being written, one uploading, a downloaded one, and slack.
  const biggest = Math.max(...(o.only.includes('verify') ? o.sizes : [0]), o.overlapMiB, o.killMiB);
  const hosts = new Hosts(env, moto, state, (KEEP_LATEST + KEEP_BEST + 4) * biggest + 256);
  try {
    await env.startControlWorker();
    if (o.only.includes('verify')) md.push(...(await verifyTable(env, hosts, moto, o.sizes, o.runs, raw)));
    if (o.only.includes('overlap')) md.push(...(await overlapTable(env, hosts, moto, { bytes: o.overlapMiB * MiB, checkpoints: o.overlapCheckpoints, stepMs: o.stepMs, every: o.overlapEvery }, raw)));
    if (o.only.includes('sigkill')) md.push(...(await sigkillTable(env, hosts, o.killMiB * MiB, o.runs, raw)));
  } finally {
    await hosts.stopAll().catch(() => undefined);
    await env.cleanup();
    await moto.stop();
  }
  if (isAlive(moto.pid)) console.error(`warning: moto (pid ${moto.pid}) is still running`);
  raw.loadAfter = load();
  md.push(`Load average before ${before}, after ${load()}. Not run on a quiet machine unless the load says so.`);
  console.log(md.join('\n'));
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(raw, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
