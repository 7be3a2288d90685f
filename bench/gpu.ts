/**
 * GPU path (issue 15), for a host with GPUs: the plain PyTorch example's steps/s bare vs under Kiln,
 * and two jobs on a 2-device pool getting different CUDA_VISIBLE_DEVICES leases, with the real
 * `nvidia-smi` telemetry Kiln reports. Without `nvidia-smi` it runs on the CPU and says so, and does
 * not write BENCHMARKS.md (a CPU figure is not a GPU figure).
 *
 *   npm run build && node dist/bench/gpu.js [--epochs 20] [--samples 65536] [--batch 256] [--hidden 1024] [--no-write]
 *
 * Needs the frameworks venv (python/requirements-frameworks.txt; KILN_FRAMEWORKS_VENV or
 * ~/.cache/kiln/frameworks-venv).
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { trainerEnv } from '../src/supervisor/protocol';
import { defaultConfigYaml, REPO, startKilnEnv } from '../test/helpers/kiln';
import { writeSection } from './report';
import { loadavg, median } from './stats';

const VENV = process.env.KILN_FRAMEWORKS_VENV ?? path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'kiln', 'frameworks-venv');
const PYTHON = path.join(VENV, 'bin', 'python');
const TRAINER = path.join(REPO, 'examples', 'pytorch-trainer', 'train.py');

const num = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};

function gpus(): string[] {
  const r = spawnSync('nvidia-smi', ['--query-gpu=index,name', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n').filter(Boolean) : [];
}

/** The trainer alone, with Kiln's environment and a reader on fd 3: steps/s from its progress events. */
async function bare(params: Record<string, unknown>, device: string): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-bench-gpu-'));
  try {
    const child = spawn(PYTHON, [TRAINER], { env: trainerEnv({ mode: 'train', jobId: 'bare', attempt: 1, params, workDir: dir, resumeFrom: '', gpuIds: device ? [device] : [] }), stdio: ['pipe', 'ignore', 'inherit', 'pipe'] });
    const steps: Array<{ t: number; step: number }> = [];
    let buf = '';
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const e = JSON.parse(line) as { type?: string; step?: number };
          if (e.type === 'progress' && typeof e.step === 'number') steps.push({ t: Date.now(), step: e.step });
        } catch {
          // not an event
        }
      }
    });
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    if (code !== 0 || steps.length < 2) throw new Error(`bare trainer exited ${code} after ${steps.length} progress events`);
    const a = steps[Math.floor(steps.length / 10)]!;
    const b = steps[steps.length - 1]!;
    return ((b.step - a.step) * 1000) / (b.t - a.t);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (!fs.existsSync(PYTHON)) throw new Error(`no frameworks venv at ${VENV} (run .ci/run, or pip install -r python/requirements-frameworks.txt into it)`);
  const devices = gpus();
  const params = { epochs: num('epochs', 20), samples: num('samples', 65536), batch_size: num('batch', 256), hidden: num('hidden', 1024), every: 1000 };
  const load0 = loadavg();
  const bareSps = await bare(params, devices.length ? '0' : '');

  const env = await startKilnEnv(
    defaultConfigYaml({
      trainers: `  torch-mlp:\n    command: [${PYTHON}, ${TRAINER}]\n    env: { PYTHONUNBUFFERED: "1" }\n    params:\n${['epochs', 'samples', 'batch_size', 'hidden', 'every'].map((k) => `      ${k}: { type: integer, min: 1 }`).join('\n')}`,
      models: `  mlp-torch:\n    trainer: torch-mlp\n    dataset: synthetic://mlp-torch/v1\n    params: ${JSON.stringify(params)}`,
    }),
  );
  try {
    await env.startControlWorker();
    await env.startGpuWorker();
    // Under Kiln: the trainer's own rate as the workflow reports it (steps/s over its last 20 steps).
    const h = await env.submit('mlp-torch');
    const rates: number[] = [];
    const poll = setInterval(() => void h.query(progressQuery).then((q) => q.stepsPerSec && q.phase === 'training' && rates.push(q.stepsPerSec), () => undefined), 500);
    await h.result();
    clearInterval(poll);
    const kilnSps = rates.length ? median(rates) : NaN;
    // Two at once (2 slots): each gets its own device lease; the summaries keep leases and telemetry.
    const [a, b] = await Promise.all([env.submit('mlp-torch'), env.submit('mlp-torch')]);
    const both = (await Promise.all([a.result(), b.result()])) as JobSummary[];
    const load1 = loadavg();
    const leases = both.map((s) => s.resource_usage.gpu_ids.join(',') || '(none: CPU)');
    const telemetry = both.map((s) => (s.resource_usage.gpu ?? []).map((g) => `#${g.index} ${g.name ?? ''} ${g.utilizationPct ?? '?'}% ${g.memoryUsedMiB ?? '?'}/${g.memoryTotalMiB ?? '?'} MiB`).join('; ') || 'none');
    const body = `Command: \`npm run build && node dist/bench/gpu.js --epochs ${params.epochs} --samples ${params.samples} --batch ${params.batch_size} --hidden ${params.hidden}\`.
Machine: ${os.hostname()}, ${devices.length ? devices.join(' | ') : 'no GPU'}, Node ${process.version}, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load ${load0} → ${load1}.

| figure | value |
|---|---|
| PyTorch example, bare (steps/s) | ${bareSps.toFixed(1)} |
| the same under Kiln (steps/s: median of the progress query's rate, ${rates.length} samples) | ${kilnSps.toFixed(1)} |
| two concurrent jobs: CUDA_VISIBLE_DEVICES leases | ${leases.join(' and ')} ${!devices.length ? '(CPU pool: no leases)' : leases[0] !== leases[1] ? '(different)' : '(SAME: wrong)'} |
| telemetry in the progress query (nvidia-smi) | ${telemetry.join(' / ')} |
`;
    console.log(body);
    if (!devices.length) console.log('no nvidia-smi here: ran on the CPU; BENCHMARKS.md not written (a CPU run is not a GPU figure)');
    else if (!process.argv.includes('--no-write')) writeSection(path.join(REPO, 'BENCHMARKS.md'), '## GPU path (issue 15)', body);
  } finally {
    await env.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
