/**
 * Tests for the bundled example trainer (examples/trainer/train.mjs) against docs/trainer-protocol.md:
 * events on fd 3, atomic announced checkpoints, exact resume, SIGTERM, exit codes, fault injection,
 * evaluation mode.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';

const TRAINER = path.resolve(__dirname, '../../examples/trainer/train.mjs');

type Json = Record<string, unknown>;

interface ProgressEvent {
  type: 'progress';
  step: number;
  total_steps: number;
  epoch: number;
  total_epochs: number;
  metrics: { loss: number };
}
interface CheckpointEvent {
  type: 'checkpoint';
  step: number;
  path: string;
  metrics?: { loss: number | null };
}
interface MetricsEvent {
  type: 'metrics';
  split: string;
  values: { val_loss: number; accuracy: number };
}
interface ArtifactEvent {
  type: 'artifact';
  name: string;
  path: string;
}
type TrainerEvent = ProgressEvent | CheckpointEvent | MetricsEvent | ArtifactEvent;

interface Weights {
  W1: number[][];
  b1: number[];
  W2: number[][];
  b2: number[];
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  events: TrainerEvent[];
  malformed: number;
  stdout: string;
  stderr: string;
  workDir: string;
  ms: number;
  progress: ProgressEvent[];
  checkpoints: CheckpointEvent[];
  validation: MetricsEvent[];
  artifacts: ArtifactEvent[];
}

interface RunOptions {
  workDir?: string;
  attempt?: number;
  resumeFrom?: string;
  extraEnv?: Record<string, string>;
  /** Called synchronously for every well-formed event as it arrives. */
  onEvent?: (ev: TrainerEvent, child: ChildProcess) => void;
  /** Called for every stdout / stderr chunk. */
  onStdout?: (text: string, child: ChildProcess) => void;
  onStderr?: (text: string, child: ChildProcess) => void;
  timeoutMs?: number;
  /** Spawn like a user would by hand: no KILN_* env, no fd 3. */
  bare?: boolean;
}

let root = '';
let counter = 0;

function newWorkDir(): string {
  const dir = path.join(root, `job-${++counter}`);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function baseEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KILN_')) env[k] = v;
  return env;
}

function isEvent(v: unknown): v is TrainerEvent {
  if (!v || typeof v !== 'object' || Array.isArray(v)) return false;
  const o = v as Json;
  switch (o.type) {
    case 'progress':
      return Number.isInteger(o.step) && (o.step as number) >= 1 && typeof o.metrics === 'object';
    case 'checkpoint':
      return Number.isInteger(o.step) && typeof o.path === 'string';
    case 'metrics':
      return typeof o.split === 'string' && !!o.values && typeof o.values === 'object';
    case 'artifact':
      return typeof o.name === 'string' && typeof o.path === 'string';
    default:
      return false;
  }
}

function runTrainer(params: Json | string, opts: RunOptions = {}): Promise<RunResult> {
  const workDir = opts.workDir ?? newWorkDir();
  const env = baseEnv();
  if (!opts.bare) {
    Object.assign(env, {
      KILN_PROTOCOL: '1',
      KILN_JOB_ID: `test-${path.basename(workDir)}`,
      KILN_ATTEMPT: String(opts.attempt ?? 1),
      KILN_PARAMS: typeof params === 'string' ? params : JSON.stringify(params),
      KILN_WORK_DIR: workDir,
      KILN_CHECKPOINT_DIR: path.join(workDir, 'checkpoints'),
      KILN_ARTIFACT_DIR: path.join(workDir, 'artifacts'),
      KILN_RESUME_FROM: opts.resumeFrom ?? '',
      KILN_EVENTS_FD: '3',
      CUDA_VISIBLE_DEVICES: '',
    });
  }
  Object.assign(env, opts.extraEnv ?? {});
  const started = Date.now();
  const child = spawn(process.execPath, [TRAINER], {
    stdio: opts.bare ? ['ignore', 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe', 'pipe'],
    env,
    cwd: workDir,
  });
  const events: TrainerEvent[] = [];
  let malformed = 0;
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    opts.onStdout?.(d, child);
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    opts.onStderr?.(d, child);
  });
  const fd3 = child.stdio[3] as Readable | null | undefined;
  if (fd3) {
    let buf = '';
    fd3.setEncoding('utf8');
    fd3.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let parsed: unknown;
        try {
          parsed = JSON.parse(line);
        } catch {
          malformed++;
          continue;
        }
        if (!isEvent(parsed)) {
          malformed++;
          continue;
        }
        events.push(parsed);
        opts.onEvent?.(parsed, child);
      }
    });
    fd3.on('end', () => {
      if (buf.trim() !== '') malformed++;
    });
  }
  const timeoutMs = opts.timeoutMs ?? 15_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`trainer did not exit within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        events,
        malformed,
        stdout,
        stderr,
        workDir,
        ms: Date.now() - started,
        progress: events.filter((e): e is ProgressEvent => e.type === 'progress'),
        checkpoints: events.filter((e): e is CheckpointEvent => e.type === 'checkpoint'),
        validation: events.filter((e): e is MetricsEvent => e.type === 'metrics' && e.split === 'validation'),
        artifacts: events.filter((e): e is ArtifactEvent => e.type === 'artifact'),
      });
    });
  });
}

/** Reads a checkpoint file and verifies its sha256 the way the trainer does; throws if corrupt. */
function readCheckpoint(file: string): { step: number; model: Weights; metrics: { loss: number } } {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { sha256: string; payload: Json };
  const digest = createHash('sha256').update(JSON.stringify(doc.payload)).digest('hex');
  assert.equal(doc.sha256, digest, `sha256 of ${file}`);
  return doc.payload as unknown as { step: number; model: Weights; metrics: { loss: number } };
}

function readModel(file: string): { weights: Weights; trained_steps: number; metrics: { val_loss: number; accuracy: number } } {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function explain(r: RunResult): string {
  return `exit ${r.code} signal ${r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
}

function assertClean(r: RunResult): void {
  assert.equal(r.code, 0, explain(r));
  assert.equal(r.signal, null);
}

function lastOf<T>(xs: T[]): T {
  assert.ok(xs.length > 0, 'expected at least one element');
  return xs[xs.length - 1]!;
}

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-example-trainer-'));
});

after(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

describe('example trainer', () => {
  it('a fresh run trains a real model and follows the event contract', async () => {
    const params = { epochs: 10, steps_per_epoch: 20, batch_size: 32, lr: 0.1, hidden: 16, seed: 3, checkpoint_every: 30 };
    const total = params.epochs * params.steps_per_epoch;
    const seenOnDisk: boolean[] = [];
    const r = await runTrainer(params, {
      onEvent: (ev) => {
        // The file must be complete on disk at the moment the checkpoint is announced.
        if (ev.type === 'checkpoint') {
          seenOnDisk.push(fs.existsSync(ev.path));
          assert.equal(readCheckpoint(ev.path).step, ev.step);
        }
      },
    });
    assertClean(r);
    assert.equal(r.malformed, 0);

    // progress: strictly increasing, 1..total, consistent epoch numbers
    const steps = r.progress.map((p) => p.step);
    assert.equal(steps[0], 1);
    assert.equal(lastOf(steps), total);
    for (let i = 1; i < steps.length; i++) assert.ok(steps[i]! > steps[i - 1]!, `progress steps increase: ${steps.join(',')}`);
    for (const p of r.progress) {
      assert.equal(p.total_steps, total);
      assert.equal(p.total_epochs, params.epochs);
      assert.equal(p.epoch, Math.ceil(p.step / params.steps_per_epoch));
      assert.ok(Number.isFinite(p.metrics.loss) && p.metrics.loss > 0);
    }

    // checkpoints: every checkpoint_every steps and at the end, inside the checkpoint dir, on disk
    assert.deepEqual(r.checkpoints.map((c) => c.step), [30, 60, 90, 120, 150, 180, 200]);
    assert.deepEqual(seenOnDisk, r.checkpoints.map(() => true));
    const ckptDir = path.join(r.workDir, 'checkpoints');
    for (const c of r.checkpoints) {
      assert.equal(path.dirname(c.path), ckptDir);
      assert.equal(path.basename(c.path), `step-${c.step}.ckpt.json`);
    }
    assert.deepEqual(fs.readdirSync(ckptDir).filter((f) => f.endsWith('.tmp')), [], 'no temp files left behind');

    // validation metrics once per epoch, on the held-out split
    assert.equal(r.validation.length, params.epochs);
    const firstVal = r.validation[0]!.values;
    const lastVal = lastOf(r.validation).values;
    assert.ok(lastVal.val_loss < firstVal.val_loss * 0.6, `val_loss ${firstVal.val_loss} -> ${lastVal.val_loss}`);
    assert.ok(lastVal.accuracy >= 0.85, `accuracy ${lastVal.accuracy} is well above chance (0.5)`);

    // the training loss actually goes down
    const firstLoss = r.progress[0]!.metrics.loss;
    const finalLoss = lastOf(r.progress).metrics.loss;
    assert.ok(finalLoss < firstLoss * 0.6, `loss ${firstLoss} -> ${finalLoss}`);

    // the model artifact, announced last
    assert.equal(r.artifacts.length, 1);
    const art = r.artifacts[0]!;
    assert.equal(art.name, 'model');
    assert.equal(art.path, path.join(r.workDir, 'artifacts', 'model.json'));
    assert.equal(lastOf(r.events), art);
    const model = readModel(art.path);
    assert.equal(model.trained_steps, total);
    assert.deepEqual(model.metrics, lastVal);
    assert.deepEqual(model.weights, readCheckpoint(lastOf(r.checkpoints).path).model);
    assert.match(r.stdout, /epoch 10\/10/);
  });

  it('resumes exactly after SIGKILL: same loss curve, identical final weights', async () => {
    const params = { epochs: 4, steps_per_epoch: 25, checkpoint_every: 10, seed: 7, hidden: 12 };
    const a = await runTrainer(params);
    assertClean(a);

    // B: slowed down a little so it is certainly mid-run when killed after the checkpoint at step >= 40.
    const b = await runTrainer({ ...params, step_delay_ms: 5 }, {
      onEvent: (ev, child) => {
        if (ev.type === 'checkpoint' && ev.step >= 40) child.kill('SIGKILL');
      },
    });
    assert.equal(b.signal, 'SIGKILL', explain(b));
    assert.equal(b.artifacts.length, 0);
    const resumeCkpt = lastOf(b.checkpoints);
    assert.ok(resumeCkpt.step >= 40 && resumeCkpt.step < 100, `killed at checkpoint ${resumeCkpt.step}`);

    const c = await runTrainer(params, { workDir: b.workDir, attempt: 2, resumeFrom: resumeCkpt.path });
    assertClean(c);
    assert.equal(c.progress[0]!.step, resumeCkpt.step + 1);
    assert.equal(lastOf(c.progress).step, 100);
    assert.match(c.stdout, /resumed from/);

    // The loss curve continues the curve of the uninterrupted run.
    const aLoss = new Map(a.checkpoints.map((x) => [x.step, x.metrics?.loss]));
    const bLoss = new Map(b.checkpoints.map((x) => [x.step, x.metrics?.loss]));
    for (const x of b.checkpoints) assert.equal(x.metrics?.loss, aLoss.get(x.step), `B loss at step ${x.step}`);
    assert.ok(c.checkpoints.length >= 1);
    for (const x of c.checkpoints) {
      assert.ok(x.step > resumeCkpt.step);
      assert.equal(x.metrics?.loss, aLoss.get(x.step), `C loss at step ${x.step}`);
      assert.ok(!bLoss.has(x.step) || bLoss.get(x.step) === x.metrics?.loss);
    }
    const aValByEpoch = a.validation.map((v) => v.values);
    const cVal = c.validation.map((v) => v.values);
    assert.deepEqual(cVal, aValByEpoch.slice(aValByEpoch.length - cVal.length));

    // Identical final weights.
    const wa = readModel(lastOf(a.artifacts).path).weights;
    const wc = readModel(lastOf(c.artifacts).path).weights;
    assert.deepEqual(wc, wa);
  });

  it('SIGTERM mid-run finishes the step, announces a new checkpoint and exits 0', async () => {
    const params = { epochs: 2, steps_per_epoch: 100, checkpoint_every: 1000, step_delay_ms: 10 };
    let sent = false;
    const r = await runTrainer(params, {
      onEvent: (ev, child) => {
        if (ev.type === 'progress' && ev.step >= 5 && !sent) {
          sent = true;
          child.kill('SIGTERM');
        }
      },
    });
    assert.ok(sent);
    assertClean(r);
    assert.equal(r.checkpoints.length, 1, 'checkpoint_every is large: the only checkpoint is the SIGTERM one');
    const ck = r.checkpoints[0]!;
    assert.ok(ck.step >= 5 && ck.step < 200, `checkpoint at ${ck.step}`);
    assert.ok(ck.step >= lastOf(r.progress).step);
    assert.equal(readCheckpoint(ck.path).step, ck.step);
    assert.equal(r.artifacts.length, 0, 'no model after a stop');

    // The checkpoint is good to resume from.
    const c = await runTrainer({ ...params, step_delay_ms: 0 }, { workDir: r.workDir, resumeFrom: ck.path, attempt: 2 });
    assertClean(c);
    assert.equal(c.progress[0]!.step, ck.step + 1);
    assert.equal(c.artifacts.length, 1);
  });

  it('SIGTERM does not wait for a long step_delay_ms', async () => {
    let sent = false;
    const r = await runTrainer({ epochs: 1, steps_per_epoch: 5, step_delay_ms: 60_000 }, {
      onStdout: (text, child) => {
        // The start line is printed after the signal handlers are installed.
        if (!sent && /fresh start/.test(text)) {
          sent = true;
          child.kill('SIGTERM');
        }
      },
    });
    assertClean(r);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
    assert.deepEqual(r.checkpoints.map((c) => c.step), [1]);
    assert.ok(fs.existsSync(r.checkpoints[0]!.path));
  });

  it('invalid params exit 2 with a message naming the param', async () => {
    const cases: Array<[Json | string, string]> = [
      [{ lr: 0 }, 'lr'],
      [{ lr: -1 }, 'lr'],
      [{ lr: 'fast' }, 'lr'],
      [{ epochs: 0 }, 'epochs'],
      [{ epochs: '5' }, 'epochs'],
      [{ batch_size: 1.5 }, 'batch_size'],
      [{ hidden: 0 }, 'hidden'],
      [{ steps_per_epoch: -2 }, 'steps_per_epoch'],
      [{ step_delay_ms: -1 }, 'step_delay_ms'],
      [{ checkpoint_every: 0 }, 'checkpoint_every'],
      [{ dataset: 'mnist' }, 'dataset'],
      [{ seed: 'abc' }, 'seed'],
      [{ fault: 'explode', fault_at_step: 1 }, 'fault'],
      [{ fault: 'crash' }, 'fault_at_step'],
      [{ fault_attempts: 'all' }, 'fault_attempts'],
      ['{not json', 'KILN_PARAMS'],
      ['[1,2]', 'KILN_PARAMS'],
    ];
    const results = await Promise.all(cases.map(([p]) => runTrainer(p)));
    results.forEach((r, i) => {
      const [p, name] = cases[i]!;
      assert.equal(r.code, 2, `params ${JSON.stringify(p)}: ${explain(r)}`);
      assert.ok(r.stderr.includes(name), `stderr names ${name}: ${r.stderr}`);
      assert.equal(r.events.length, 0);
    });
  });

  it('fault=garbage on fd 3 does not disturb training', async () => {
    const params = { epochs: 2, steps_per_epoch: 10, seed: 5, hidden: 8 };
    const clean = await runTrainer(params);
    assertClean(clean);
    const r = await runTrainer({ ...params, fault: 'garbage', fault_at_step: 4 });
    assertClean(r);
    assert.ok(r.malformed >= 150, `malformed lines: ${r.malformed}`);
    assert.equal(lastOf(r.progress).step, 20);
    assert.equal(r.artifacts.length, 1);
    assert.deepEqual(readModel(r.artifacts[0]!.path).weights, readModel(clean.artifacts[0]!.path).weights);
  });

  it('fault=crash exits 1 on attempt 1 and runs clean on attempt 2', async () => {
    const params = { epochs: 3, steps_per_epoch: 10, checkpoint_every: 10, fault: 'crash', fault_at_step: 15 };
    const r1 = await runTrainer(params);
    assert.equal(r1.code, 1, explain(r1));
    assert.deepEqual(r1.checkpoints.map((c) => c.step), [10]);
    assert.equal(r1.artifacts.length, 0);
    assert.match(r1.stderr, /crash/);

    const fresh2 = await runTrainer(params, { attempt: 2 });
    assertClean(fresh2);
    assert.equal(fresh2.artifacts.length, 1);

    const resumed = await runTrainer(params, { workDir: r1.workDir, attempt: 2, resumeFrom: r1.checkpoints[0]!.path });
    assertClean(resumed);
    assert.equal(resumed.progress[0]!.step, 11);
    assert.deepEqual(readModel(resumed.artifacts[0]!.path).weights, readModel(fresh2.artifacts[0]!.path).weights);

    // fault_attempts selects the attempts the fault fires on
    const r3 = await runTrainer({ ...params, fault_attempts: [3] }, { attempt: 3 });
    assert.equal(r3.code, 1);
  });

  it('fault=truncate leaves a corrupt unannounced checkpoint; resuming from the previous one works', async () => {
    const params = { epochs: 3, steps_per_epoch: 10, checkpoint_every: 10, fault: 'truncate', fault_at_step: 15 };
    const r1 = await runTrainer(params);
    assert.equal(r1.code, 1, explain(r1));
    assert.deepEqual(r1.checkpoints.map((c) => c.step), [10]);
    const torn = path.join(r1.workDir, 'checkpoints', 'step-20.ckpt.json');
    assert.ok(fs.existsSync(torn), 'a torn checkpoint file was left at the next checkpoint path');
    assert.throws(() => readCheckpoint(torn));

    const bad = await runTrainer(params, { workDir: r1.workDir, attempt: 2, resumeFrom: torn });
    assert.equal(bad.code, 1, explain(bad));
    assert.match(bad.stderr, /corrupt/);
    assert.equal(bad.progress.length, 0);

    const missing = await runTrainer(params, { workDir: r1.workDir, attempt: 2, resumeFrom: path.join(r1.workDir, 'nope.ckpt.json') });
    assert.equal(missing.code, 1);

    const good = await runTrainer(params, { workDir: r1.workDir, attempt: 2, resumeFrom: r1.checkpoints[0]!.path });
    assertClean(good);
    assert.equal(good.progress[0]!.step, 11);
    assert.equal(readCheckpoint(torn).step, 20, 'the torn file was replaced by a good checkpoint');
  });

  it('fault=exit2 exits 2, fault=hang stalls but still honours SIGTERM', async () => {
    const e2 = await runTrainer({ epochs: 1, steps_per_epoch: 10, fault: 'exit2', fault_at_step: 3 });
    assert.equal(e2.code, 2);

    let hungAt = 0;
    const r = await runTrainer({ epochs: 1, steps_per_epoch: 50, step_delay_ms: 5, fault: 'hang', fault_at_step: 4 }, {
      onStderr: (text, child) => {
        if (!hungAt && /hanging/.test(text)) {
          hungAt = Date.now();
          setTimeout(() => child.kill('SIGTERM'), 300);
        }
      },
    });
    assert.ok(hungAt > 0);
    assert.ok(Date.now() - hungAt >= 300);
    assertClean(r);
    assert.ok(lastOf(r.progress).step <= 4, 'no progress while hanging');
    assert.deepEqual(r.checkpoints.map((c) => c.step), [4]);
  });

  it('exits promptly when stdin reaches EOF (supervisor gone)', async () => {
    const r = await runTrainer({ epochs: 1, steps_per_epoch: 1000, step_delay_ms: 20 }, {
      onEvent: (ev, child) => {
        if (ev.type === 'progress') child.stdin!.end();
      },
    });
    assert.notEqual(r.code, 0);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
    assert.match(r.stderr, /stdin/);
  });

  it('evaluation mode emits one validation metrics event matching training', async () => {
    const params = { epochs: 3, steps_per_epoch: 20, dataset: 'blobs', seed: 11 };
    const t = await runTrainer(params);
    assertClean(t);
    const modelPath = t.artifacts[0]!.path;
    const e = await runTrainer(params, { workDir: t.workDir, extraEnv: { KILN_MODE: 'evaluate', KILN_MODEL_PATH: modelPath } });
    assertClean(e);
    assert.equal(e.events.length, 1);
    assert.deepEqual(e.validation.map((v) => v.values), [lastOf(t.validation).values]);
    assert.ok(e.validation[0]!.values.accuracy > 0.8, 'blobs are easy: accuracy well above chance (1/3)');

    const missing = await runTrainer(params, { extraEnv: { KILN_MODE: 'evaluate', KILN_MODEL_PATH: path.join(root, 'nope.json') } });
    assert.equal(missing.code, 1);
  });

  it('runs by hand outside Kiln with defaults (no env, no fd 3)', async () => {
    const r = await runTrainer({}, { bare: true });
    assertClean(r);
    assert.ok(fs.existsSync(path.join(r.workDir, 'artifacts', 'model.json')));
    assert.ok(fs.existsSync(path.join(r.workDir, 'checkpoints', 'step-100.ckpt.json')));
    assert.match(r.stdout, /epoch 5\/5 step 100\/100/);
  });
});
