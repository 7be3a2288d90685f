// The model: a 1-hidden-layer MLP (tanh or relu, softmax output, cross-entropy loss) trained by
// minibatch SGD, and the model.json file the trainer writes as its artifact.

import { rngFor } from './random.mjs';
import { VAL_FRACTION } from './data.mjs';

export const ACTIVATIONS = ['tanh', 'relu'];
export const MODEL_FORMAT = 'kiln-example-trainer/model';
const MODEL_VERSION = 1;

export function initModel(p, dim, classes) {
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
export function sgdStep(m, activation, lr, data, batch) {
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

/** Validation loss and accuracy of `m` on the points `indices`. */
export function evaluate(m, activation, data, indices) {
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

/** Whether `m` is a set of finite weights for `dim` inputs and `classes` outputs (and `hidden` units, if given). */
export function checkModelShape(m, dim, classes, hidden) {
  const isVec = (v, n) => Array.isArray(v) && v.length === n && v.every((x) => typeof x === 'number' && Number.isFinite(x));
  const isMat = (w, r, c) => Array.isArray(w) && w.length === r && w.every((row) => isVec(row, c));
  return (
    m && typeof m === 'object' &&
    (hidden === undefined || m.b1?.length === hidden) &&
    Array.isArray(m.b1) && isVec(m.b1, m.b1.length) && m.b1.length >= 1 &&
    isMat(m.W1, m.b1.length, dim) && isVec(m.b2, classes) && isMat(m.W2, classes, m.b1.length)
  );
}

/** The model artifact: architecture, dataset, metrics and weights; `weights` is what evaluate mode loads. */
export function modelDoc(p, data, m, step, valMetrics) {
  return {
    format: MODEL_FORMAT,
    version: MODEL_VERSION,
    architecture: { type: 'mlp', input_dim: data.dim, hidden: p.hidden, activation: p.activation, classes: data.classes, output: 'softmax' },
    dataset: { name: p.dataset, seed: p.seed, samples: p.samples, val_fraction: VAL_FRACTION },
    trained_steps: step,
    metrics: valMetrics,
    params: { ...p },
    weights: m,
  };
}
