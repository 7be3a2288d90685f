/**
 * Dataset versions (issue 13): the need-check's cost on a large local dataset in metadata mode, and
 * the content resolver's throughput and the event-loop delay while it hashes (it runs in a worker
 * thread, so the control worker's loop must stay free). Sparse files: the sizes are real to the
 * resolvers (stat and read), the disk use is not.
 *
 *   npm run build && node dist/bench/datasets.js [--gib 100] [--files 100] [--content-gib 3] [--runs 5] [--no-write]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseConfigText } from '../src/config/load';
import { resolveDatasetVersion } from '../src/datasets';
import { writeSection } from './report';
import { loadavg, stats } from './stats';

const GiB = 2 ** 30;

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

function sparseTree(dir: string, files: number, totalGiB: number): void {
  fs.mkdirSync(dir, { recursive: true });
  const each = Math.floor((totalGiB * GiB) / files);
  for (let i = 0; i < files; i++) {
    const f = path.join(dir, `part-${String(i).padStart(5, '0')}.parquet`);
    fs.closeSync(fs.openSync(f, 'w'));
    fs.truncateSync(f, each);
  }
}

async function main(): Promise<void> {
  const gib = arg('gib', 100);
  const files = arg('files', 100);
  const contentGiB = arg('content-gib', 3);
  const runs = arg('runs', 5);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-datasets-'));
  try {
    sparseTree(path.join(root, 'big'), files, gib);
    sparseTree(path.join(root, 'hashme'), 3, contentGiB);
    const yaml = (local: string) => `version: 1\ndatasets: { local: ${local}, maxBytes: 1TiB, timeout: 1h }\ntrainers:\n  t: { command: [node, t.mjs] }\nmodels:\n  m: { trainer: t, dataset: big }\n`;
    const meta = parseConfigText(yaml('metadata'), path.join(root, 'temporal.yaml'), {});
    const content = parseConfigText(yaml('content'), path.join(root, 'temporal.yaml'), {});
    const load0 = loadavg();

    const metaMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await resolveDatasetVersion(meta, 'big');
      metaMs.push(performance.now() - t0);
    }

    const mbps: number[] = [];
    const maxDelay: number[] = [];
    for (let i = 0; i < runs; i++) {
      const h = monitorEventLoopDelay({ resolution: 10 });
      h.enable();
      const t0 = performance.now();
      await resolveDatasetVersion(content, 'hashme');
      const s = (performance.now() - t0) / 1000;
      h.disable();
      mbps.push((contentGiB * GiB) / 1e6 / s);
      maxDelay.push(h.max / 1e6);
    }
    const load1 = loadavg();
    const m = stats(metaMs);
    const c = stats(mbps);
    const d = stats(maxDelay);
    const fmt = (x: number) => x.toFixed(x < 10 ? 1 : 0);
    const body = `Command: \`npm run build && node dist/bench/datasets.js --gib ${gib} --files ${files} --content-gib ${contentGiB} --runs ${runs}\`.
Machine: ${os.cpus().length}-core ${os.hostname()} VM (${os.cpus()[0]?.model ?? 'cpu'}), Node ${process.version}, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load ${load0} → ${load1}.
Setup: \`resolveDatasetVersion\` in this process (as the control worker calls it), on sparse files in ${os.tmpdir()}: ${files} files of ${fmt(gib / files)} GiB (${gib} GiB) for metadata mode, 3 files (${contentGiB} GiB) for content mode. The event-loop delay is \`monitorEventLoopDelay\` (10 ms resolution) while the worker thread hashes.

| figure | runs | median | p95 | min | max | target | verdict |
|---|---|---|---|---|---|---|---|
| need-check on a ${gib} GiB local dataset, metadata mode | ${runs} | ${fmt(m.median)} ms | ${fmt(m.p95)} ms | ${fmt(m.min)} ms | ${fmt(m.max)} ms | < 1 s | ${m.p95 < 1000 ? 'met' : 'missed'} |
| content mode throughput (sha256 in a worker thread) | ${runs} | ${fmt(c.median)} MB/s | ${fmt(c.p95)} MB/s | ${fmt(c.min)} MB/s | ${fmt(c.max)} MB/s | report | – |
| max event-loop delay while hashing | ${runs} | ${fmt(d.median)} ms | ${fmt(d.p95)} ms | ${fmt(d.min)} ms | ${fmt(d.max)} ms | < 100 ms | ${d.max < 100 ? 'met' : 'missed'} |
`;
    console.log(body);
    if (!process.argv.includes('--no-write')) writeSection(path.resolve(__dirname, '..', '..', 'BENCHMARKS.md'), '## Dataset versions (issue 13)', body);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
