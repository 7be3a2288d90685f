// Seeded randomness. Every random number is derived from (seed, purpose[, epoch, pass]), so a resumed
// run draws exactly what an uninterrupted one would.

import crypto from 'node:crypto';

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

export function rngFor(seed, ...tags) {
  return mulberry32(deriveSeed(seed, ...tags));
}

/** Standard normal via Box-Muller (deterministic given the PRNG). */
export function gaussian(rng) {
  let u = 0;
  while (u === 0) u = rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Fisher-Yates permutation of 0..n-1. */
export function permutation(n, rng) {
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
