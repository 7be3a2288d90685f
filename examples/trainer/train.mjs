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

import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';

const CKPT_FORMAT = 'kiln-example-trainer/checkpoint';
const MODEL_FORMAT = 'kiln-example-trainer/model';
const FORMAT_VERSION = 1;
const PROGRESS_MIN_INTERVAL_MS = 50; // at most ~20 progress lines per second
const VAL_FRACTION = 0.2;

// ---------------------------------------------------------------------------------------------
// Small helpers

function log(msg) {
  process.stdout.write(`${msg}\n`);
}

function warn(msg) {
  process.stderr.write(`train.mjs: ${msg}\n`);
}

function die(code, msg) {
  warn(msg);
  process.exit(code);
}

class ParamError extends Error {}

/** mulberry32: tiny, fast, good enough seeded PRNG returning floats in [0, 1). */
function mulberry32(a) {
  a >>>= 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 32-bit seed derived from the user seed and a purpose, so independent streams never overlap. */
function deriveSeed(seed, ...tags) {
  const h = crypto.createHash('sha256').update([String(seed), ...tags.map(String)].join('\u0000')).digest();
  return h.readUInt32LE(0);
}

function rngFor(seed, ...tags) {
  return mulberry32(deriveSeed(seed, ...tags));
}

/** Standard normal via Box-Muller (deterministic given the PRNG). */
function gaussian(rng) {
  let u = 0;
  while (u === 0) u = rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Fisher-Yates permutation of 0..n-1. */
function permutation(n, rng) {
  const p = new Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');

// Sleep for `ms`, returning early when `wake()` is called (SIGTERM must not wait for a long delay).
let wakeSleeper = null;
function sleep(ms) {
  return new Promise((resolve) => {
    if (ms <= 0) {
      setImmediate(resolve); // still yield to the event loop so signals / stdin EOF get handled
      return;
    }
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      wakeSleeper = null;
      resolve();
    }
    wakeSleeper = done;
  });
}
function wake() {
  if (wakeSleeper) wakeSleeper();
}

function syncSleepMs(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** writeSync until every byte is out; retries EAGAIN (a non-blocking pipe that is momentarily full). */
function writeAllSync(fd, buf) {
  let off = 0;
  let spins = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
      spins = 0;
    } catch (err) {
      if (err && err.code === 'EAGAIN' && spins++ < 10000) {
        syncSleepMs(1);
        continue;
      }
      throw err;
    }
  }
}

/**
 * Write a file atomically: `<file>.tmp`, fsync, rename, fsync the directory. `holdMs` keeps the
 * temp file in place that long before the rename, like the write of a large checkpoint.
 */
function writeFileAtomic(file, text, holdMs = 0) {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeAllSync(fd, Buffer.from(text, 'utf8'));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (holdMs > 0) syncSleepMs(holdMs);
  fs.renameSync(tmp, file);
  try {
    const dfd = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // directory fsync is best effort (not supported everywhere)
  }
}

// ---------------------------------------------------------------------------------------------
// Events on fd 3

function openEvents() {
  const raw = process.env.KILN_EVENTS_FD;
  const explicit = raw !== undefined && raw !== '';
  const fd = explicit ? Number(raw) : 3;
  if (!Number.isInteger(fd) || fd < 0) {
    warn(`KILN_EVENTS_FD=${JSON.stringify(raw)} is not a file descriptor; events are disabled`);
    return null;
  }
  let st;
  try {
    st = fs.fstatSync(fd);
  } catch {
    return null; // not open: running by hand, every event is a no-op
  }
  // Without KILN_EVENTS_FD, only trust fd 3 when it is a pipe or socket: a shell may leave some
  // unrelated file or directory open on fd 3, and we must not scribble JSON into it.
  if (!explicit && !(st.isFIFO() || st.isSocket())) return null;
  return fd;
}

const events = {
  fd: openEvents(),
  emit(obj) {
    this.raw(`${JSON.stringify(obj)}\n`);
  },
  raw(text) {
    if (this.fd === null) return;
    try {
      writeAllSync(this.fd, Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8'));
    } catch (err) {
      warn(`events pipe (fd ${this.fd}) failed: ${err && err.code ? err.code : err}; events are disabled`);
      this.fd = null;
    }
  },
};

// ---------------------------------------------------------------------------------------------
// Params

const DEFAULTS = Object.freeze({
  epochs: 5,
  steps_per_epoch: 20,
  batch_size: 32,
  lr: 0.1,
  hidden: 16,
  seed: 1,
  step_delay_ms: 0,
  checkpoint_every: null, // = steps_per_epoch
  checkpoint_write_ms: 0, // extra time a checkpoint write takes (tests: kill "during" a write)
  dataset: 'spirals',
  activation: 'tanh',
  samples: 1000,
  fault: null,
  fault_at_step: null,
  fault_attempts: [1],
});

const DATASETS = ['spirals', 'blobs'];
const ACTIVATIONS = ['tanh', 'relu'];
const FAULTS = ['crash', 'hang', 'exit2', 'garbage', 'truncate'];

function parseParams(rawText) {
  let raw = {};
  if (rawText !== undefined && rawText.trim() !== '') {
    try {
      raw = JSON.parse(rawText);
    } catch (err) {
      throw new ParamError(`KILN_PARAMS is not valid JSON: ${err.message}`);
    }
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ParamError('KILN_PARAMS must be a JSON object');
  }
  const p = { ...DEFAULTS };
  for (const [k, v] of Object.entries(raw)) {
    if (!(k in DEFAULTS)) {
      warn(`ignoring unknown param "${k}"`);
      continue;
    }
    if (v !== null) p[k] = v; // null = use the default
  }

  const int = (name, min, max) => {
    const v = p[name];
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      throw new ParamError(`param "${name}" must be an integer, got ${JSON.stringify(v)}`);
    }
    if (v < min || v > max) throw new ParamError(`param "${name}" must be between ${min} and ${max}, got ${v}`);
  };
  const oneOf = (name, allowed) => {
    if (typeof p[name] !== 'string' || !allowed.includes(p[name])) {
      throw new ParamError(`param "${name}" must be one of ${allowed.map((a) => `"${a}"`).join(', ')}, got ${JSON.stringify(p[name])}`);
    }
  };

  int('epochs', 1, 1_000_000);
  int('steps_per_epoch', 1, 10_000_000);
  int('batch_size', 1, 65_536);
  int('hidden', 1, 4096);
  int('seed', -2_147_483_648, 4_294_967_295);
  int('samples', 20, 1_000_000);
  if (typeof p.lr !== 'number' || !Number.isFinite(p.lr) || p.lr <= 0) {
    throw new ParamError(`param "lr" must be a finite number > 0, got ${JSON.stringify(p.lr)}`);
  }
  if (typeof p.step_delay_ms !== 'number' || !Number.isFinite(p.step_delay_ms) || p.step_delay_ms < 0) {
    throw new ParamError(`param "step_delay_ms" must be a number >= 0, got ${JSON.stringify(p.step_delay_ms)}`);
  }
  if (p.checkpoint_every === null) p.checkpoint_every = p.steps_per_epoch;
  int('checkpoint_every', 1, 1_000_000_000);
  int('checkpoint_write_ms', 0, 60_000);
  oneOf('dataset', DATASETS);
  oneOf('activation', ACTIVATIONS);

  if (p.fault !== null) {
    oneOf('fault', FAULTS);
    if (p.fault_at_step === null) throw new ParamError('param "fault_at_step" is required when "fault" is set');
    int('fault_at_step', 1, Number.MAX_SAFE_INTEGER);
  } else if (p.fault_at_step !== null) {
    int('fault_at_step', 1, Number.MAX_SAFE_INTEGER);
  }
  if (!Array.isArray(p.fault_attempts) || !p.fault_attempts.every((a) => Number.isInteger(a) && a >= 1)) {
    throw new ParamError(`param "fault_attempts" must be an array of attempt numbers >= 1, got ${JSON.stringify(p.fault_attempts)}`);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Data

/**
 * Deterministic synthetic dataset. Returns { X: number[][], y: number[], classes, dim, train, val }
 * where train/val are index arrays (a fixed held-out split).
 */
function makeDataset(name, seed, samples) {
  const rng = rngFor(seed, 'data', name, samples);
  const X = [];
  const y = [];
  let classes;
  if (name === 'spirals') {
    // Two interleaved spirals (3/4 turn each, radius 0.6..4) with a little noise.
    classes = 2;
    for (let i = 0; i < samples; i++) {
      const c = i % 2;
      const t = (Math.floor(i / 2) + 0.5) / Math.ceil(samples / 2); // 0..1 along the arm
      const r = 4 * (0.15 + 0.85 * t);
      const a = c * Math.PI + t * 1.5 * Math.PI;
      X.push([r * Math.cos(a) + 0.06 * gaussian(rng), r * Math.sin(a) + 0.06 * gaussian(rng)]);
      y.push(c);
    }
  } else {
    // Three gaussian blobs on a circle of radius 2, std 0.6.
    classes = 3;
    for (let i = 0; i < samples; i++) {
      const c = i % 3;
      const a = (2 * Math.PI * c) / 3;
      X.push([2 * Math.cos(a) + 0.6 * gaussian(rng), 2 * Math.sin(a) + 0.6 * gaussian(rng)]);
      y.push(c);
    }
  }
  const order = permutation(samples, rng);
  const nVal = Math.max(1, Math.round(samples * VAL_FRACTION));
  return { X, y, classes, dim: 2, val: order.slice(0, nVal), train: order.slice(nVal) };
}

// ---------------------------------------------------------------------------------------------
// Model: 1 hidden layer MLP, softmax + cross-entropy

function initModel(p, dim, classes) {
  const rng = rngFor(p.seed, 'init', p.hidden, p.activation);
  const H = p.hidden;
  // Xavier/Glorot uniform for tanh, He uniform for relu.
  const lim1 = p.activation === 'relu' ? Math.sqrt(6 / dim) : Math.sqrt(6 / (dim + H));
  const lim2 = Math.sqrt(6 / (H + classes));
  const u = (lim) => (2 * rng() - 1) * lim;
  return {
    W1: Array.from({ length: H }, () => Array.from({ length: dim }, () => u(lim1))),
    b1: new Array(H).fill(0),
    W2: Array.from({ length: classes }, () => Array.from({ length: H }, () => u(lim2))),
    b2: new Array(classes).fill(0),
  };
}

function act(activation, z) {
  return activation === 'relu' ? (z > 0 ? z : 0) : Math.tanh(z);
}

function forward(m, activation, x) {
  const H = m.b1.length;
  const K = m.b2.length;
  const h = new Array(H);
  for (let j = 0; j < H; j++) {
    let z = m.b1[j];
    const w = m.W1[j];
    for (let d = 0; d < x.length; d++) z += w[d] * x[d];
    h[j] = act(activation, z);
  }
  const logits = new Array(K);
  let max = -Infinity;
  for (let k = 0; k < K; k++) {
    let z = m.b2[k];
    const w = m.W2[k];
    for (let j = 0; j < H; j++) z += w[j] * h[j];
    logits[k] = z;
    if (z > max) max = z;
  }
  let sum = 0;
  const prob = new Array(K);
  for (let k = 0; k < K; k++) {
    prob[k] = Math.exp(logits[k] - max);
    sum += prob[k];
  }
  for (let k = 0; k < K; k++) prob[k] /= sum;
  return { h, prob };
}

/** One SGD step on a minibatch (in place). Returns the mean cross-entropy of the batch before the update. */
function sgdStep(m, activation, lr, data, batch) {
  const H = m.b1.length;
  const K = m.b2.length;
  const D = data.dim;
  const gW1 = Array.from({ length: H }, () => new Array(D).fill(0));
  const gb1 = new Array(H).fill(0);
  const gW2 = Array.from({ length: K }, () => new Array(H).fill(0));
  const gb2 = new Array(K).fill(0);
  let loss = 0;
  const dh = new Array(H);
  for (const idx of batch) {
    const x = data.X[idx];
    const c = data.y[idx];
    const { h, prob } = forward(m, activation, x);
    loss += -Math.log(Math.max(prob[c], 1e-300));
    dh.fill(0);
    for (let k = 0; k < K; k++) {
      const dz = prob[k] - (k === c ? 1 : 0);
      gb2[k] += dz;
      const w = m.W2[k];
      const g = gW2[k];
      for (let j = 0; j < H; j++) {
        g[j] += dz * h[j];
        dh[j] += dz * w[j];
      }
    }
    for (let j = 0; j < H; j++) {
      const dz = activation === 'relu' ? (h[j] > 0 ? dh[j] : 0) : dh[j] * (1 - h[j] * h[j]);
      gb1[j] += dz;
      const g = gW1[j];
      for (let d = 0; d < D; d++) g[d] += dz * x[d];
    }
  }
  const s = lr / batch.length;
  for (let j = 0; j < H; j++) {
    m.b1[j] -= s * gb1[j];
    for (let d = 0; d < D; d++) m.W1[j][d] -= s * gW1[j][d];
  }
  for (let k = 0; k < K; k++) {
    m.b2[k] -= s * gb2[k];
    for (let j = 0; j < H; j++) m.W2[k][j] -= s * gW2[k][j];
  }
  return loss / batch.length;
}

function evaluate(m, activation, data, indices) {
  let loss = 0;
  let correct = 0;
  for (const idx of indices) {
    const { prob } = forward(m, activation, data.X[idx]);
    const c = data.y[idx];
    loss += -Math.log(Math.max(prob[c], 1e-300));
    let best = 0;
    for (let k = 1; k < prob.length; k++) if (prob[k] > prob[best]) best = k;
    if (best === c) correct++;
  }
  return { val_loss: loss / indices.length, accuracy: correct / indices.length };
}

function checkModelShape(m, dim, classes, hidden) {
  const isVec = (v, n) => Array.isArray(v) && v.length === n && v.every((x) => typeof x === 'number' && Number.isFinite(x));
  const isMat = (w, r, c) => Array.isArray(w) && w.length === r && w.every((row) => isVec(row, c));
  return (
    m && typeof m === 'object' &&
    (hidden === undefined || m.b1?.length === hidden) &&
    Array.isArray(m.b1) && isVec(m.b1, m.b1.length) && m.b1.length >= 1 &&
    isMat(m.W1, m.b1.length, dim) && isVec(m.b2, classes) && isMat(m.W2, classes, m.b1.length)
  );
}

// ---------------------------------------------------------------------------------------------
// Minibatch schedule: a pure function of (seed, epoch, step in epoch)

class Schedule {
  constructor(seed, train, batchSize, stepsPerEpoch) {
    this.seed = seed;
    this.train = train;
    this.batchSize = batchSize;
    this.stepsPerEpoch = stepsPerEpoch;
    this.cache = new Map(); // `${epoch}:${pass}` -> permutation (only the current epoch is kept)
    this.cacheEpoch = 0;
  }

  perm(epoch, pass) {
    if (epoch !== this.cacheEpoch) {
      this.cache.clear();
      this.cacheEpoch = epoch;
    }
    const key = pass;
    let p = this.cache.get(key);
    if (!p) {
      p = permutation(this.train.length, rngFor(this.seed, 'shuffle', epoch, pass));
      this.cache.set(key, p);
    }
    return p;
  }

  /** Training-set indices of global step `step` (1-based). Epoch e is shuffled by (seed, e). */
  batch(step) {
    const epoch = Math.floor((step - 1) / this.stepsPerEpoch) + 1;
    const inEpoch = (step - 1) % this.stepsPerEpoch;
    const n = this.train.length;
    const out = new Array(this.batchSize);
    for (let j = 0; j < this.batchSize; j++) {
      const pos = inEpoch * this.batchSize + j; // position in the epoch's stream of samples
      out[j] = this.train[this.perm(epoch, Math.floor(pos / n))[pos % n]];
    }
    return out;
  }

  /** Where the shuffled stream stands after `step` completed steps (stored in checkpoints). */
  position(step) {
    const nextEpoch = Math.floor(step / this.stepsPerEpoch) + 1;
    const pos = (step % this.stepsPerEpoch) * this.batchSize;
    return { seed: this.seed, epoch: nextEpoch, pass: Math.floor(pos / this.train.length), position: pos };
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

function serializeCheckpoint(payload) {
  const body = JSON.stringify(payload);
  return `{"format":"${CKPT_FORMAT}","version":${FORMAT_VERSION},"sha256":"${sha256(body)}","payload":${body}}\n`;
}

/** Loads and verifies a checkpoint; throws an Error with a readable message if it is unusable. */
function loadCheckpoint(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read checkpoint ${file}: ${err.code || err.message}`);
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error(`checkpoint ${file} is corrupt (not valid JSON; truncated write?)`);
  }
  if (!doc || doc.format !== CKPT_FORMAT || typeof doc.payload !== 'object' || doc.payload === null) {
    throw new Error(`checkpoint ${file} is not a ${CKPT_FORMAT} file`);
  }
  if (doc.version !== FORMAT_VERSION) throw new Error(`checkpoint ${file} has unsupported version ${doc.version}`);
  const actual = sha256(JSON.stringify(doc.payload));
  if (doc.sha256 !== actual) {
    throw new Error(`checkpoint ${file} is corrupt (sha256 mismatch: file says ${doc.sha256}, content is ${actual})`);
  }
  return doc.payload;
}

// ---------------------------------------------------------------------------------------------
// Paths and env

function dirFromEnv(name, fallback) {
  const v = process.env[name];
  const dir = path.resolve(v && v !== '' ? v : fallback);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function attemptFromEnv() {
  const raw = process.env.KILN_ATTEMPT;
  if (raw === undefined || raw === '') return 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    warn(`KILN_ATTEMPT=${JSON.stringify(raw)} is not an attempt number; assuming 1`);
    return 1;
  }
  return n;
}

function modelDoc(p, data, m, step, valMetrics) {
  return {
    format: MODEL_FORMAT,
    version: FORMAT_VERSION,
    architecture: { type: 'mlp', input_dim: data.dim, hidden: p.hidden, activation: p.activation, classes: data.classes, output: 'softmax' },
    dataset: { name: p.dataset, seed: p.seed, samples: p.samples, val_fraction: VAL_FRACTION },
    trained_steps: step,
    metrics: valMetrics,
    params: { ...p },
    weights: m,
  };
}

// ---------------------------------------------------------------------------------------------
// Supervisor liveness: stdin EOF means the supervisor is gone

function watchStdin() {
  let st;
  try {
    st = fs.fstatSync(0);
  } catch {
    return;
  }
  // A Kiln supervisor holds a pipe open on stdin. Node's child_process "pipe" is a socketpair, so
  // sockets count as pipes too; a TTY, /dev/null or a regular file is ignored.
  if (!(st.isFIFO() || st.isSocket())) return;
  process.stdin.on('data', () => {});
  process.stdin.on('error', () => {});
  process.stdin.on('end', () => die(1, 'stdin closed: the supervisor is gone, exiting'));
  process.stdin.resume();
}

// ---------------------------------------------------------------------------------------------
// Fault injection (tests only)

function writeGarbage(step) {
  const lines = [];
  const shapes = [
    'this is not json',
    '{',
    '}{',
    '[]',
    '[1,2,3]',
    '42',
    'true',
    'null',
    '"just a string"',
    '{}',
    '{"type":"progress"}',
    '{"type":"progress","step":"seven"}',
    '{"type":"progress","step":-3,"total_steps":"many"}',
    '{"type":"progress","step":1.5}',
    '{"type":"checkpoint"}',
    '{"type":"checkpoint","step":"x","path":42}',
    '{"type":"metrics","split":"validation","values":"high"}',
    '{"type":"metrics","split":7}',
    '{"type":"artifact","name":12}',
    '{"type":"no-such-event","step":1}',
    '{"step":5}',
    '\u0000\u0001\u0002 binary \u00ff\u00fe',
    '   ',
    '{"type":"progress","step":1,"metrics":{"loss":"NaN"}',
    '\ud83d\udd25 unicode ✓ ünïcödé',
  ];
  for (let i = 0; lines.length < 200; i++) lines.push(shapes[i % shapes.length]);
  events.raw(`${lines.join('\n')}\n`);
  events.raw(Buffer.from([0xc3, 0x28, 0xa0, 0xa1, 0xff, 0x0a])); // invalid UTF-8
  events.raw(`${'x'.repeat(100 * 1024)}\n`); // a 100 KB non-JSON line
  events.raw(`{"type":"log","pad":"${'y'.repeat(100 * 1024)}"}\n`); // a 100 KB JSON line
  warn(`injected fault: wrote garbage to the events pipe at step ${step}`);
}

// ---------------------------------------------------------------------------------------------
// Modes

function evaluateMode(p) {
  const modelPath = process.env.KILN_MODEL_PATH && process.env.KILN_MODEL_PATH !== ''
    ? path.resolve(process.env.KILN_MODEL_PATH)
    : path.join(dirFromEnv('KILN_ARTIFACT_DIR', 'artifacts'), 'model.json');
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  } catch (err) {
    die(1, `cannot load model ${modelPath}: ${err.code || err.message}`);
  }
  if (!doc || doc.format !== MODEL_FORMAT) die(1, `${modelPath} is not a ${MODEL_FORMAT} file`);
  const data = makeDataset(p.dataset, p.seed, p.samples);
  const activation = doc.architecture?.activation;
  if (!ACTIVATIONS.includes(activation)) die(1, `${modelPath}: unknown activation ${JSON.stringify(activation)}`);
  if (!checkModelShape(doc.weights, data.dim, data.classes)) {
    die(2, `${modelPath} does not fit dataset "${p.dataset}" (${data.dim} inputs, ${data.classes} classes)`);
  }
  const values = evaluate(doc.weights, activation, data, data.val);
  events.emit({ type: 'metrics', split: 'validation', values });
  log(`evaluate ${modelPath}: val_loss ${values.val_loss.toFixed(4)} accuracy ${values.accuracy.toFixed(4)} on ${data.val.length} held-out points`);
  process.exit(0);
}

async function trainMode(p) {
  const ckptDir = dirFromEnv('KILN_CHECKPOINT_DIR', 'checkpoints');
  const artifactDir = dirFromEnv('KILN_ARTIFACT_DIR', 'artifacts');
  const attempt = attemptFromEnv();
  const faultArmed = p.fault !== null && p.fault_attempts.includes(attempt);
  const data = makeDataset(p.dataset, p.seed, p.samples);
  const totalSteps = p.epochs * p.steps_per_epoch;
  const sched = new Schedule(p.seed, data.train, p.batch_size, p.steps_per_epoch);
  const structural = { dataset: p.dataset, samples: p.samples, seed: p.seed, hidden: p.hidden, activation: p.activation };

  let model;
  let step = 0; // completed steps
  let lastLoss = null;
  let lastVal = null;
  let startMsg = '';
  const resumeFrom = process.env.KILN_RESUME_FROM;
  if (resumeFrom && resumeFrom !== '') {
    let ck;
    try {
      ck = loadCheckpoint(resumeFrom);
    } catch (err) {
      die(1, `cannot resume: ${err.message}`);
    }
    for (const [k, v] of Object.entries(structural)) {
      if (ck.params?.[k] !== v) {
        die(2, `cannot resume from ${resumeFrom}: param "${k}" is ${JSON.stringify(v)} but the checkpoint was trained with ${JSON.stringify(ck.params?.[k])}`);
      }
    }
    for (const k of ['lr', 'batch_size', 'steps_per_epoch']) {
      if (ck.params?.[k] !== p[k]) {
        warn(`param "${k}" changed since the checkpoint (${JSON.stringify(ck.params?.[k])} -> ${JSON.stringify(p[k])}); the run will not match an uninterrupted one`);
      }
    }
    if (!Number.isInteger(ck.step) || ck.step < 1 || !checkModelShape(ck.model, data.dim, data.classes, p.hidden)) {
      die(1, `cannot resume: checkpoint ${resumeFrom} has an invalid step or model`);
    }
    if (ck.step > totalSteps) {
      die(2, `cannot resume: checkpoint ${resumeFrom} is at step ${ck.step}, beyond total_steps ${totalSteps} (epochs=${p.epochs} x steps_per_epoch=${p.steps_per_epoch})`);
    }
    model = ck.model;
    step = ck.step;
    lastLoss = ck.metrics?.loss ?? null;
    lastVal = ck.validation ?? null;
    startMsg = `resumed from ${resumeFrom} at step ${step}/${totalSteps} (attempt ${attempt})`;
  } else {
    model = initModel(p, data.dim, data.classes);
    startMsg = (`fresh start: ${p.dataset} (${data.train.length} train / ${data.val.length} validation points), ` +
      `mlp 2-${p.hidden}-${data.classes} ${p.activation}, ${p.epochs} epochs x ${p.steps_per_epoch} steps, ` +
      `batch ${p.batch_size}, lr ${p.lr} (attempt ${attempt})`);
  }

  let lastCkptStep = 0;
  let lastCkptPath = null;
  const ckptPath = (n) => path.join(ckptDir, `step-${n}.ckpt.json`);
  const ckptPayload = (n) => ({
    step: n,
    epoch: Math.ceil(n / p.steps_per_epoch),
    total_steps: totalSteps,
    job_id: process.env.KILN_JOB_ID || null,
    params: { ...p },
    rng: { kind: 'mulberry32/derived', shuffle: sched.position(n) },
    metrics: { loss: lastLoss },
    validation: lastVal,
    model,
  });
  const checkpoint = (n) => {
    if (lastCkptStep !== n) {
      writeFileAtomic(ckptPath(n), serializeCheckpoint(ckptPayload(n)), p.checkpoint_write_ms);
      lastCkptStep = n;
      lastCkptPath = ckptPath(n);
    }
    events.emit({ type: 'checkpoint', step: n, path: lastCkptPath, metrics: { loss: lastLoss } });
  };
  const finish = () => {
    if (lastVal === null) lastVal = evaluate(model, p.activation, data, data.val);
    if (lastCkptStep !== step) checkpoint(step);
    const file = path.join(artifactDir, 'model.json');
    writeFileAtomic(file, `${JSON.stringify(modelDoc(p, data, model, step, lastVal), null, 1)}\n`);
    events.emit({ type: 'artifact', name: 'model', path: file });
    log(`done: ${step} steps, val_loss ${lastVal.val_loss.toFixed(4)} accuracy ${lastVal.accuracy.toFixed(4)}; model written to ${file}`);
    process.exit(0);
  };

  // SIGTERM (and Ctrl-C by hand): finish the current step, checkpoint, announce, exit 0.
  let stopRequested = false;
  let hanging = false;
  const onStop = (sig) => {
    if (stopRequested) return;
    stopRequested = true;
    log(`${sig} received: saving a checkpoint after step ${hanging ? step : step + 1}`);
    if (hanging) {
      // The hang fault sits between steps: the state after `step` steps is consistent.
      if (step > 0) checkpoint(step);
      process.exit(0);
    }
    wake();
  };
  process.on('SIGTERM', () => onStop('SIGTERM'));
  process.on('SIGINT', () => onStop('SIGINT'));
  watchStdin();
  log(startMsg); // only now: a supervisor may send SIGTERM as soon as it sees output

  if (step >= totalSteps) {
    // Resumed from the final checkpoint (e.g. the previous attempt died before writing the model).
    events.emit({ type: 'progress', step, total_steps: totalSteps, epoch: p.epochs, total_epochs: p.epochs, metrics: { loss: lastLoss } });
    lastVal = evaluate(model, p.activation, data, data.val);
    events.emit({ type: 'metrics', split: 'validation', values: lastVal });
    finish();
  }

  let lastProgressAt = -Infinity;
  let firstStep = true;
  while (step < totalSteps) {
    await sleep(p.step_delay_ms); // the "slow" part of a step; cut short by SIGTERM

    const n = step + 1;
    const loss = sgdStep(model, p.activation, p.lr, data, sched.batch(n));
    if (!Number.isFinite(loss) || !model.b2.every(Number.isFinite)) {
      die(2, `training diverged at step ${n} (loss ${loss}); lower param "lr" (now ${p.lr})`);
    }
    step = n;
    lastLoss = loss;
    const epoch = Math.ceil(step / p.steps_per_epoch);

    const now = Date.now();
    if (firstStep || step === totalSteps || now - lastProgressAt >= PROGRESS_MIN_INTERVAL_MS) {
      events.emit({ type: 'progress', step, total_steps: totalSteps, epoch, total_epochs: p.epochs, metrics: { loss } });
      lastProgressAt = now;
      firstStep = false;
    }

    const faultNow = faultArmed && step === p.fault_at_step;
    if (faultNow && p.fault === 'truncate') {
      // A torn write: part of a checkpoint at the next checkpoint's final path, never announced.
      const next = Math.min(Math.ceil(step / p.checkpoint_every) * p.checkpoint_every, totalSteps);
      const text = serializeCheckpoint(ckptPayload(next));
      fs.writeFileSync(ckptPath(next), text.slice(0, Math.floor(text.length / 2)));
      die(1, `injected fault: truncated checkpoint ${ckptPath(next)} at step ${step}, exiting`);
    }
    if (faultNow && p.fault === 'exit2') die(2, `injected fault: exit 2 at step ${step}`);

    if (step % p.steps_per_epoch === 0) {
      lastVal = evaluate(model, p.activation, data, data.val);
      events.emit({ type: 'metrics', split: 'validation', values: lastVal });
      log(`epoch ${epoch}/${p.epochs} step ${step}/${totalSteps} loss ${loss.toFixed(4)} ` +
        `val_loss ${lastVal.val_loss.toFixed(4)} accuracy ${lastVal.accuracy.toFixed(4)}`);
    }
    if (step % p.checkpoint_every === 0 || step === totalSteps) checkpoint(step);

    if (faultNow && p.fault === 'garbage') writeGarbage(step);
    if (faultNow && p.fault === 'crash') die(1, `injected fault: crash after step ${step}`);
    if (faultNow && p.fault === 'hang') {
      warn(`injected fault: hanging after step ${step} (SIGTERM still works)`);
      hanging = true;
      if (stopRequested) {
        if (step > 0) checkpoint(step);
        process.exit(0);
      }
      setInterval(() => {}, 1 << 30);
      return;
    }

    if (stopRequested && step < totalSteps) {
      checkpoint(step);
      log(`stopped at step ${step}/${totalSteps} after a signal; checkpoint ${lastCkptPath}`);
      process.exit(0);
    }
  }
  finish();
}

// ---------------------------------------------------------------------------------------------

let params;
try {
  params = parseParams(process.env.KILN_PARAMS);
} catch (err) {
  if (err instanceof ParamError) die(2, `invalid params: ${err.message}`);
  throw err;
}

if (process.env.KILN_MODE === 'evaluate') {
  evaluateMode(params);
} else if (process.env.KILN_MODE && process.env.KILN_MODE !== 'train') {
  die(2, `unknown KILN_MODE ${JSON.stringify(process.env.KILN_MODE)} (expected "train" or "evaluate")`);
} else {
  trainMode(params).catch((err) => die(1, `unexpected error: ${err && err.stack ? err.stack : err}`));
}
