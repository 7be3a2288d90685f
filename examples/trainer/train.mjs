#!/usr/bin/env node
// Kiln example trainer: a real, dependency-free trainer that follows docs/trainer-protocol.md (v1).
//
// It trains a 1-hidden-layer MLP (tanh or relu, softmax output, cross-entropy loss) by minibatch SGD
// on a synthetic 2-D classification dataset generated deterministically from `seed`, reports JSON-line
// events on fd 3, checkpoints atomically, resumes exactly, and honours SIGTERM / stdin EOF.
//
// Everything random is derived from (seed, purpose[, epoch, pass]) through a seeded PRNG (mulberry32),
// so the minibatch order is a pure function of (seed, epoch, step) and a resumed run reproduces an
// uninterrupted one bit for bit (same weights, same loss curve).
//
// Run by hand:   node examples/trainer/train.mjs          (writes ./checkpoints and ./artifacts)
//                KILN_PARAMS='{"epochs":3,"dataset":"blobs"}' node examples/trainer/train.mjs
//
// Exit codes: 0 success (also after SIGTERM + checkpoint), 2 invalid params, 1 anything else
// (corrupt/missing resume checkpoint, injected crash, supervisor gone).
//
// The files: this one (the two modes and the training loop), protocol.mjs (the Kiln contract: KILN_*
// env, events on fd 3, exit codes, SIGTERM, stdin EOF), params.mjs, checkpoint.mjs, files.mjs (atomic
// writes), data.mjs, model.mjs, random.mjs, and faults.mjs: fault injection for Kiln's tests only.

import fs from 'node:fs';
import path from 'node:path';
import { EXIT, log, die, envValue, dirFromEnv, attemptFromEnv, events, sleep, onStopSignal, watchStdin } from './protocol.mjs';
import { parseParams, ParamError } from './params.mjs';
import { makeDataset, Schedule } from './data.mjs';
import { ACTIVATIONS, MODEL_FORMAT, initModel, sgdStep, evaluate, checkModelShape, modelDoc } from './model.mjs';
import { Checkpoints, resumeState } from './checkpoint.mjs';
import { writeFileAtomic } from './files.mjs';
import { Faults } from './faults.mjs';

const PROGRESS_MIN_INTERVAL_MS = 50; // at most ~20 progress lines per second

/** KILN_MODE=evaluate: score the model at KILN_MODEL_PATH on the held-out points, as one metrics event. */
function evaluateMode(p) {
  const modelPath = envValue('KILN_MODEL_PATH') !== null
    ? path.resolve(envValue('KILN_MODEL_PATH'))
    : path.join(dirFromEnv('KILN_ARTIFACT_DIR', 'artifacts'), 'model.json');
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  } catch (err) {
    die(EXIT.FAILED, `cannot load model ${modelPath}: ${err.code || err.message}`);
  }
  if (!doc || doc.format !== MODEL_FORMAT) die(EXIT.FAILED, `${modelPath} is not a ${MODEL_FORMAT} file`);
  const data = makeDataset(p.dataset, p.seed, p.samples);
  const activation = doc.architecture?.activation;
  if (!ACTIVATIONS.includes(activation)) die(EXIT.FAILED, `${modelPath}: unknown activation ${JSON.stringify(activation)}`);
  if (!checkModelShape(doc.weights, data.dim, data.classes)) {
    die(EXIT.INVALID, `${modelPath} does not fit dataset "${p.dataset}" (${data.dim} inputs, ${data.classes} classes)`);
  }
  const values = evaluate(doc.weights, activation, data, data.val);
  events.emit({ type: 'metrics', split: 'validation', values });
  log(`evaluate ${modelPath}: val_loss ${values.val_loss.toFixed(4)} accuracy ${values.accuracy.toFixed(4)} on ${data.val.length} held-out points`);
  process.exit(EXIT.OK);
}

/** The state to train from: the checkpoint at KILN_RESUME_FROM, or a fresh model. */
function startState(p, data, totalSteps, attempt) {
  const resumeFrom = envValue('KILN_RESUME_FROM');
  if (resumeFrom !== null) {
    const state = resumeState(resumeFrom, p, data, totalSteps);
    return { state, startMsg: `resumed from ${resumeFrom} at step ${state.step}/${totalSteps} (attempt ${attempt})` };
  }
  const state = { model: initModel(p, data.dim, data.classes), step: 0, loss: null, validation: null };
  const startMsg = (`fresh start: ${p.dataset} (${data.train.length} train / ${data.val.length} validation points), ` +
    `mlp 2-${p.hidden}-${data.classes} ${p.activation}, ${p.epochs} epochs x ${p.steps_per_epoch} steps, ` +
    `batch ${p.batch_size}, lr ${p.lr} (attempt ${attempt})`);
  return { state, startMsg };
}

/**
 * SIGTERM (and Ctrl-C by hand): the training loop finishes the current step, checkpoints, announces
 * and exits 0. The test-only hang fault sits between steps (`stop.hanging`): there the state after
 * `state.step` steps is consistent, and `stop.now()` saves it at once.
 */
function handleStop(state, checkpoints) {
  const stop = { requested: false, hanging: false };
  stop.now = () => {
    if (state.step > 0) checkpoints.save(state.step);
    process.exit(EXIT.OK);
  };
  onStopSignal((sig) => {
    stop.requested = true;
    log(`${sig} received: saving a checkpoint after step ${stop.hanging ? state.step : state.step + 1}`);
    if (stop.hanging) stop.now();
  });
  return stop;
}

async function trainMode(p) {
  const checkpointDir = dirFromEnv('KILN_CHECKPOINT_DIR', 'checkpoints');
  const artifactDir = dirFromEnv('KILN_ARTIFACT_DIR', 'artifacts');
  const attempt = attemptFromEnv();
  const faults = new Faults(p, attempt); // test only
  const data = makeDataset(p.dataset, p.seed, p.samples);
  const totalSteps = p.epochs * p.steps_per_epoch;
  const schedule = new Schedule(p.seed, data.train, p.batch_size, p.steps_per_epoch);
  const { state, startMsg } = startState(p, data, totalSteps, attempt);
  const checkpoints = new Checkpoints(checkpointDir, p, totalSteps, schedule, state);

  const progress = (epoch) => {
    events.emit({ type: 'progress', step: state.step, total_steps: totalSteps, epoch, total_epochs: p.epochs, metrics: { loss: state.loss } });
  };
  const validate = () => {
    state.validation = evaluate(state.model, p.activation, data, data.val);
    events.emit({ type: 'metrics', split: 'validation', values: state.validation });
  };
  const finish = () => {
    if (state.validation === null) state.validation = evaluate(state.model, p.activation, data, data.val);
    if (checkpoints.lastStep !== state.step) checkpoints.save(state.step);
    const file = path.join(artifactDir, 'model.json');
    writeFileAtomic(file, `${JSON.stringify(modelDoc(p, data, state.model, state.step, state.validation), null, 1)}\n`);
    events.emit({ type: 'artifact', name: 'model', path: file });
    log(`done: ${state.step} steps, val_loss ${state.validation.val_loss.toFixed(4)} accuracy ${state.validation.accuracy.toFixed(4)}; model written to ${file}`);
    process.exit(EXIT.OK);
  };

  const stop = handleStop(state, checkpoints);
  watchStdin();
  log(startMsg); // only now: a supervisor may send SIGTERM as soon as it sees output

  if (state.step >= totalSteps) {
    // Resumed from the final checkpoint (e.g. the previous attempt died before writing the model).
    progress(p.epochs);
    validate();
    finish();
  }

  let lastProgressAt = -Infinity; // the first step always reports
  while (state.step < totalSteps) {
    await sleep(p.step_delay_ms); // the "slow" part of a step; cut short by SIGTERM

    const n = state.step + 1;
    const loss = sgdStep(state.model, p.activation, p.lr, data, schedule.batch(n));
    if (!Number.isFinite(loss) || !state.model.b2.every(Number.isFinite)) {
      die(EXIT.INVALID, `training diverged at step ${n} (loss ${loss}); lower param "lr" (now ${p.lr})`);
    }
    state.step = n;
    state.loss = loss;
    const epoch = Math.ceil(n / p.steps_per_epoch);
    const now = Date.now();
    if (n === totalSteps || now - lastProgressAt >= PROGRESS_MIN_INTERVAL_MS) {
      progress(epoch);
      lastProgressAt = now;
    }

    faults.beforeCheckpoint(n, checkpoints); // test only: a torn checkpoint, exit 2
    if (n % p.steps_per_epoch === 0) {
      validate();
      log(`epoch ${epoch}/${p.epochs} step ${n}/${totalSteps} loss ${loss.toFixed(4)} ` +
        `val_loss ${state.validation.val_loss.toFixed(4)} accuracy ${state.validation.accuracy.toFixed(4)}`);
    }
    if (n % p.checkpoint_every === 0 || n === totalSteps) checkpoints.save(n);
    if (faults.afterCheckpoint(n, stop)) return; // test only: garbage on fd 3, a crash, a hang

    if (stop.requested && n < totalSteps) {
      checkpoints.save(n);
      log(`stopped at step ${n}/${totalSteps} after a signal; checkpoint ${checkpoints.lastPath}`);
      process.exit(EXIT.OK);
    }
  }
  finish();
}

let params;
try {
  params = parseParams(process.env.KILN_PARAMS);
} catch (err) {
  if (err instanceof ParamError) die(EXIT.INVALID, `invalid params: ${err.message}`);
  throw err;
}

const mode = envValue('KILN_MODE') ?? 'train';
if (mode === 'evaluate') {
  evaluateMode(params);
} else if (mode !== 'train') {
  die(EXIT.INVALID, `unknown KILN_MODE ${JSON.stringify(mode)} (expected "train" or "evaluate")`);
} else {
  trainMode(params).catch((err) => die(EXIT.FAILED, `unexpected error: ${err && err.stack ? err.stack : err}`));
}
