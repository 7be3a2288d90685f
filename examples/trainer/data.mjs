// The data: a synthetic 2-D classification dataset generated from `seed`, and the minibatch schedule,
// a pure function of (seed, epoch, step in epoch).

import { rngFor, gaussian, permutation } from './random.mjs';

export const DATASETS = ['spirals', 'blobs'];
export const VAL_FRACTION = 0.2;

/**
 * Deterministic synthetic dataset. Returns { X: number[][], y: number[], classes, dim, train, val }
 * where train/val are index arrays (a fixed held-out split).
 */
export function makeDataset(name, seed, samples) {
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

/** Which training points each step sees. Epoch e is shuffled by (seed, e), so any step can be recomputed. */
export class Schedule {
  constructor(seed, train, batchSize, stepsPerEpoch) {
    this.seed = seed;
    this.train = train;
    this.batchSize = batchSize;
    this.stepsPerEpoch = stepsPerEpoch;
    this.cache = new Map(); // pass -> permutation (only the current epoch is kept)
    this.cacheEpoch = 0;
  }

  perm(epoch, pass) {
    if (epoch !== this.cacheEpoch) {
      this.cache.clear();
      this.cacheEpoch = epoch;
    }
    let p = this.cache.get(pass);
    if (!p) {
      p = permutation(this.train.length, rngFor(this.seed, 'shuffle', epoch, pass));
      this.cache.set(pass, p);
    }
    return p;
  }

  /** Training-set indices of global step `step` (1-based). */
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
