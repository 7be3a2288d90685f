/**
 * The real-framework examples (examples/{hf,lightning,xgboost,pytorch}-trainer) as Kiln jobs on the dev
 * server, with the frameworks venv's python (python/requirements-frameworks.txt, installed by .ci/run):
 * each completes and registers only model-quality metrics; a SIGKILLed GPU worker's job resumes on
 * another worker from the last announced checkpoint (first step = checkpoint + 1) and ends with exactly
 * the uninterrupted job's validation metrics; a cancel makes the trainer save and exit 0 within the grace.
 * Skipped, with a message, where the venv is missing.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import { summaryPath, type JobSummary } from '../src/shared/summary';
import { isAlive } from '../src/supervisor/proc';
import { registryPath } from '../src/registry/open';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { defaultConfigYaml, readTrainerLog, REPO, startKilnEnv, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';

const VENV = process.env.KILN_FRAMEWORKS_VENV ?? path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'kiln', 'frameworks-venv');
const PYTHON = path.join(VENV, 'bin', 'python');
const HAVE_VENV = fs.existsSync(PYTHON);
const ex = (name: string) => path.join(REPO, 'examples', name, 'train.py');

const trainer = (name: string, example: string, params: string) => `  ${name}:
    command: [${PYTHON}, ${ex(example)}]
    env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: "1", HF_HUB_OFFLINE: "1" }
    params:
${params}`;
const int = (n: string) => `      ${n}: { type: integer, min: 0 }`;
const model = (name: string, trainerName: string, metric: string, extra = '') => `  ${name}:
    trainer: ${trainerName}
    dataset: synthetic://${name}/v1
    pool: gpu
    gpus: 1
    requiredMetrics: [${metric}]
    promotion: { metric: ${metric}, direction: min, mode: auto }${extra}`;

const yaml = defaultConfigYaml({
  trainers: [
    trainer('hf-gpt2', 'hf-trainer', ['epochs', 'samples', 'batch_size', 'save_steps', 'seed', 'step_delay_ms'].map(int).join('\n')),
    trainer('lightning-mlp', 'lightning-trainer', ['epochs', 'batch_size', 'every', 'seed', 'step_delay_ms'].map(int).join('\n')),
    trainer('xgboost-trees', 'xgboost-trainer', ['rounds', 'every', 'max_depth', 'seed', 'round_delay_ms'].map(int).join('\n')),
    trainer('torch-mlp', 'pytorch-trainer', ['epochs', 'samples', 'batch_size', 'hidden', 'every', 'seed', 'step_delay_ms'].map(int).join('\n')),
  ].join('\n'),
  models: [
    model('gpt2-tiny', 'hf-gpt2', 'val_loss'),
    model('mlp-lightning', 'lightning-mlp', 'val_loss'),
    model('trees-xgb', 'xgboost-trees', 'rmse'),
    model('mlp-torch', 'torch-mlp', 'val_loss', '\n    params: { epochs: 3 }'),
  ].join('\n'),
  timeouts: `  heartbeat: 4s\n  stall: 120s\n  cancelGrace: 10s\n  maxAttempts: 5`,
});

/** Exactly these validation metric names reach the registry: no runtime, throughput or `eval_` duplicates. */
const QUALITY: Record<string, string[]> = {
  'gpt2-tiny': ['val_loss'],
  'mlp-lightning': ['acc', 'val_acc', 'val_loss'],
  'trees-xgb': ['rmse'],
  'mlp-torch': ['accuracy', 'val_loss'],
};
const STEPS: Record<string, number> = { 'gpt2-tiny': 40, 'mlp-lightning': 64, 'trees-xgb': 20, 'mlp-torch': 96 };
const SLOW: Record<string, Record<string, number>> = {
  'gpt2-tiny': { step_delay_ms: 250 },
  'mlp-lightning': { step_delay_ms: 150 },
  'trees-xgb': { round_delay_ms: 600 },
  'mlp-torch': { step_delay_ms: 120 },
};

function trainerOf(env: KilnTestEnv, jobId: string): number | undefined {
  return trainerPids(env.home).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/environ`, 'utf8').includes(`KILN_JOB_ID=${jobId}\0`) && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('train.py');
    } catch {
      return false;
    }
  });
}

describe('real frameworks through Kiln', { skip: HAVE_VENV ? false : `no frameworks venv at ${VENV} (bash .ci/run installs it)` }, () => {
  let env: KilnTestEnv;
  const reference: Record<string, JobSummary> = {};
  before(async () => {
    env = await startKilnEnv(yaml);
    await env.startControlWorker();
  });
  after(async () => {
    await env?.cleanup();
  });

  /** The validation metrics the registry recorded for a job's version, at full precision (the summary rounds them). */
  const registered = async (s: JobSummary): Promise<Record<string, number>> => {
    const reg = new SqliteModelRegistry(registryPath(env.config));
    try {
      const v = await reg.get(s.model, s.registry.version!);
      assert.ok(v, `${s.model} v${s.registry.version} in the registry`);
      return v.metrics;
    } finally {
      await reg.close();
    }
  };

  for (const name of Object.keys(QUALITY)) {
    test(`${name}: completes and registers only quality metrics`, async (t) => {
      const w = await env.startGpuWorker({ slots: 1 });
      const t0 = Date.now();
      const s = (await (await env.submit(name)).result()) as JobSummary;
      t.diagnostic(`${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s, validation ${JSON.stringify(s.validation_metrics)}`);
      assert.equal(s.outcome, 'completed');
      assert.equal(s.training_metrics.steps, STEPS[name]);
      assert.deepEqual(Object.keys(s.validation_metrics).sort(), QUALITY[name]);
      assert.equal(typeof s.training_metrics.final_loss, 'number');
      assert.equal(s.registry.complete, true);
      assert.ok(s.artifacts.model_path && fs.existsSync(summaryPath(s, s.artifacts.model_path)));
      reference[name] = s;
      w.kill('SIGTERM');
      await w.exited;
    });
  }

  for (const name of ['gpt2-tiny', 'trees-xgb', 'mlp-torch']) {
    test(`${name}: worker SIGKILL after two checkpoints resumes exactly on another worker`, async (t) => {
      assert.ok(reference[name], 'the uninterrupted job ran first');
      const a = await env.startGpuWorker({ slots: 1 });
      const h = await env.submit(name, { params: SLOW[name] });
      const oldPid = await waitFor(() => trainerOf(env, h.workflowId) ?? null, 120_000, 'the trainer on worker a');
      // Worker b starts while the trainer runs (a start takes seconds on a loaded machine, longer
      // than the rest of a short job), so the kill below lands mid-training.
      const b = await env.startGpuWorker({ slots: 1 });
      await waitFor(async () => ((await h.query(progressQuery)).checkpoints >= 2 ? true : null), 120_000, 'two checkpoints');
      assert.ok(isAlive(oldPid), 'the trainer is still training when worker a is killed');
      a.kill('SIGKILL');
      await waitFor(() => !isAlive(oldPid), 20_000, 'the orphaned trainer to die');
      const s = (await h.result()) as JobSummary;
      assert.equal(s.outcome, 'completed');
      assert.equal(s.training_metrics.steps, STEPS[name]);
      assert.ok(s.session_info.resume, 'resumed');
      assert.ok(s.session_info.resume.from_step >= 1);
      assert.equal(s.session_info.resume.first_step, s.session_info.resume.from_step + 1);
      t.diagnostic(`${name}: resumed at step ${s.session_info.resume.first_step} from ${s.session_info.resume.from_step}; validation ${JSON.stringify(s.validation_metrics)}`);
      assert.deepEqual(await registered(s), await registered(reference[name]!)); // bit for bit
      b.kill('SIGTERM');
      await b.exited;
    });
  }

  test('mlp-lightning: cancel makes Lightning save and exit 0 within the grace period', async (t) => {
    const w = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('mlp-lightning', { params: { ...SLOW['mlp-lightning'], every: 1000 } });
    await waitFor(async () => ((await h.query(progressQuery)).step >= 12 ? true : null), 120_000, 'step 12');
    const pid = trainerOf(env, h.workflowId)!;
    const t0 = Date.now();
    await h.signal('cancel', { reason: 'test' });
    await waitFor(() => !isAlive(pid), 15_000, 'trainer exit');
    t.diagnostic(`lightning trainer exited ${Date.now() - t0} ms after the cancel signal (grace 10 s)`);
    await assert.rejects(h.result());
    const d = await h.describe();
    assert.equal(d.status.name, 'CANCELLED');
    const s = (d.memo as { summary: JobSummary }).summary;
    assert.ok(s.artifacts.last_checkpoint && s.artifacts.last_checkpoint.step >= 12, `checkpoint on SIGTERM: ${JSON.stringify(s.artifacts.last_checkpoint)}`);
    assert.ok(fs.existsSync(summaryPath(s, s.artifacts.last_checkpoint.path)));
    assert.doesNotMatch(readTrainerLog(env, h.workflowId), /Traceback/);
    w.kill('SIGTERM');
    await w.exited;
  });
});
