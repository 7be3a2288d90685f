/**
 * `npm run bench`: lists the benchmarks and how to run each; `npm run bench -- <name> [options]` runs
 * one (the same as `node dist/bench/<name>.js [options]` after a build). Each takes minutes to hours
 * on a real dev server and writes its section of BENCHMARKS.md, so none runs by default.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const BENCHES: Record<string, { what: string; usage: string }> = {
  training: {
    what: 'TrainingJob (issue 3): cancel latency, resume after a worker dies or drains, supervision overhead, worker memory',
    usage: '[--runs 10] [--pairs 3] [--job-seconds 35] [--memory-runs 3] [--only cancel,cancel-kill,sigkill,sigterm,overhead,memory] [--json FILE]',
  },
  schedules: {
    what: 'Schedules (issue 4): schedule fire → trainer started, and trigger storms deduped to one training',
    usage: '[--fires 12] [--warmup 1] [--storms 3] [--storm-size 100] [--no-write] [--json FILE]',
  },
  datasets: {
    what: 'Dataset versions (issue 13): metadata need-check on a large sparse dataset, content hashing throughput and event-loop delay',
    usage: '[--gib 100] [--files 100] [--content-gib 3] [--runs 5] [--no-write]',
  },
  gpu: {
    what: 'GPU path (issue 15): the PyTorch example bare vs under Kiln, two jobs on two devices, nvidia-smi telemetry (writes only where a GPU exists)',
    usage: '[--epochs 20] [--samples 65536] [--batch 256] [--hidden 1024] [--no-write]',
  },
  checkpoints: {
    what: 'Checkpoint hashing (issue 16): sha256 time by checkpoint size and the event-loop delay meanwhile (prints only)',
    usage: '[--mib 256,1024,4096] [--runs 3]',
  },
  history: {
    what: 'History growth (issue 16): history events per hour of training at 1 checkpoint/s and 1/min (prints only)',
    usage: '[--minutes 60]',
  },
  overlap: {
    what: 'Two live trainers for one job (issue 16): the owning GPU worker SIGSTOPped on another host (mount namespaces, S3 on moto), /proc every 50 ms; overlap and takeover',
    usage: '[--runs 10] [--json FILE]',
  },
  takeover: {
    what: 'Takeover (issue 16): worker SIGKILL restarted by kiln dev or host gone → first resumed step, steps lost, 100 interruptions of one job (prints only)',
    usage: '[--runs 10] [--interruptions 100] [--steps-per-fault 80] [--only restart,host-gone,interruptions] [--json FILE]',
  },
  storage: {
    what: 'Object storage (issue 12): checkpoint announced → verified by size, step time while uploading, cross-host SIGKILL → resumed step, local disk use (prints only)',
    usage: '[--sizes 16,256,1024] [--runs 5] [--overlap-mib 256] [--overlap-checkpoints 8] [--overlap-every STEPS] [--step-ms 50] [--kill-mib 256] [--only verify,overlap,sigkill] [--json FILE]',
  },
  load: {
    what: 'Reliability and load (issue 7): 200 jobs at once on 2 GPU workers, exactly-once checks, RSS; plus the chaos figures',
    usage: '[--jobs 200] [--runs 10] [--workers 2] [--slots 4] [--steps 5] [--json FILE] [--from-json FILE] [--no-write]',
  },
};

function usage(): string {
  const lines = ['Benchmarks (results go to BENCHMARKS.md). Run one with:', '  npm run bench -- <name> [options]   or   node dist/bench/<name>.js [options]', ''];
  for (const [name, b] of Object.entries(BENCHES)) lines.push(`  ${name}: ${b.what}`, `    node dist/bench/${name}.js ${b.usage}`, '');
  return lines.join('\n');
}

function main(): void {
  const [name, ...args] = process.argv.slice(2);
  if (!name || name === '--help' || name === '-h') {
    console.log(usage());
    return;
  }
  if (!BENCHES[name]) {
    console.error(`unknown benchmark ${JSON.stringify(name)}\n\n${usage()}`);
    process.exit(2);
  }
  const r = spawnSync(process.execPath, [path.join(__dirname, `${name}.js`), ...args], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

main();
