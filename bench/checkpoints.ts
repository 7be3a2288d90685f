/**
 * Checkpoint hashing (issue 16 item 2): how long a verified checkpoint's sha256 takes by size, and the
 * event loop's delay while it hashes (it streams in awaited 1 MiB reads on the GPU worker's loop, so
 * heartbeats and the shim's pings must keep flowing). Sparse files on the tmp disk: the sizes are
 * real to the hash (every byte is read), the disk use is not. Prints a markdown table for
 * BENCHMARKS.md (it writes nothing); run it on a quiet machine.
 *
 *   npm run build && node dist/bench/checkpoints.js [--mib 256,1024,4096] [--runs 3]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { digestCheckpoint } from '../src/supervisor/checkpointDigest';
import { loadavg, median } from './stats';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : def;
}

async function hashOnce(file: string): Promise<{ ms: number; maxDelayMs: number; p99DelayMs: number }> {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const t0 = performance.now();
  await digestCheckpoint(file);
  const ms = performance.now() - t0;
  delay.disable();
  return { ms, maxDelayMs: delay.max / 1e6, p99DelayMs: delay.percentile(99) / 1e6 };
}

async function main(): Promise<void> {
  if (process.argv.includes('--help')) {
    console.log('node dist/bench/checkpoints.js [--mib 256,1024,4096] [--runs 3]');
    return;
  }
  const sizes = arg('mib', '256,1024,4096').split(',').map(Number);
  const runs = Number(arg('runs', '3'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-checkpoints-'));
  const before = loadavg();
  const rows: string[] = [];
  try {
    for (const mib of sizes) {
      const file = path.join(dir, `step-${mib}.ckpt`);
      fs.closeSync(fs.openSync(file, 'w'));
      fs.truncateSync(file, mib * 2 ** 20);
      const r: Awaited<ReturnType<typeof hashOnce>>[] = [];
      for (let i = 0; i < runs; i++) r.push(await hashOnce(file));
      fs.rmSync(file);
      const ms = median(r.map((x) => x.ms));
      rows.push(`| ${mib} MiB | ${Math.round(ms)} ms | ${Math.round((mib / ms) * 1000)} MiB/s | ${Math.round(Math.max(...r.map((x) => x.maxDelayMs)))} ms | ${Math.round(median(r.map((x) => x.p99DelayMs)))} ms |`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`### Checkpoint hashing (issue 16 item 2)

Machine: ${os.cpus().length}× ${os.cpus()[0]?.model ?? '?'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}; ${new Date().toISOString().slice(0, 10)}.
Command: \`node dist/bench/checkpoints.js --mib ${sizes.join(',')} --runs ${runs}\`. Load average before: ${before}; after: ${loadavg()}.

| checkpoint | sha256 (median of ${runs}) | throughput | event-loop delay, max | event-loop delay, p99 |
|---|---|---|---|---|
${rows.join('\n')}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
