// The trainer's params: KILN_PARAMS, a JSON object. A missing or null field takes its default; an
// unknown one is ignored with a warning; a bad value is a ParamError (the trainer exits 2).

import { warn } from './protocol.mjs';
import { DATASETS } from './data.mjs';
import { ACTIVATIONS } from './model.mjs';
import { FAULT_DEFAULTS, checkFaultParams } from './faults.mjs';

export const DEFAULTS = Object.freeze({
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
  ...FAULT_DEFAULTS, // test only: see faults.mjs
});

/** Thrown when KILN_PARAMS does not fit; the message names the param. */
export class ParamError extends Error {}

function readObject(text) {
  let raw = {};
  if (text !== undefined && text.trim() !== '') {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ParamError(`KILN_PARAMS is not valid JSON: ${err.message}`);
    }
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ParamError('KILN_PARAMS must be a JSON object');
  }
  return raw;
}

/** Checks on the params object `p`, each throwing a ParamError. */
function checks(p) {
  const fail = (msg) => {
    throw new ParamError(msg);
  };
  const int = (name, min, max) => {
    const v = p[name];
    if (typeof v !== 'number' || !Number.isInteger(v)) fail(`param "${name}" must be an integer, got ${JSON.stringify(v)}`);
    if (v < min || v > max) fail(`param "${name}" must be between ${min} and ${max}, got ${v}`);
  };
  const oneOf = (name, allowed) => {
    if (typeof p[name] !== 'string' || !allowed.includes(p[name])) {
      fail(`param "${name}" must be one of ${allowed.map((a) => `"${a}"`).join(', ')}, got ${JSON.stringify(p[name])}`);
    }
  };
  return { fail, int, oneOf };
}

/** Parses and validates KILN_PARAMS (unset or blank: all defaults). */
export function parseParams(text) {
  const raw = readObject(text);
  const p = { ...DEFAULTS };
  for (const [k, v] of Object.entries(raw)) {
    if (!(k in DEFAULTS)) {
      warn(`ignoring unknown param "${k}"`);
      continue;
    }
    if (v !== null) p[k] = v; // null = use the default
  }

  const check = checks(p);
  const { fail, int, oneOf } = check;
  int('epochs', 1, 1_000_000);
  int('steps_per_epoch', 1, 10_000_000);
  int('batch_size', 1, 65_536);
  int('hidden', 1, 4096);
  int('seed', -2_147_483_648, 4_294_967_295);
  int('samples', 20, 1_000_000);
  if (typeof p.lr !== 'number' || !Number.isFinite(p.lr) || p.lr <= 0) {
    fail(`param "lr" must be a finite number > 0, got ${JSON.stringify(p.lr)}`);
  }
  if (typeof p.step_delay_ms !== 'number' || !Number.isFinite(p.step_delay_ms) || p.step_delay_ms < 0) {
    fail(`param "step_delay_ms" must be a number >= 0, got ${JSON.stringify(p.step_delay_ms)}`);
  }
  if (p.checkpoint_every === null) p.checkpoint_every = p.steps_per_epoch;
  int('checkpoint_every', 1, 1_000_000_000);
  int('checkpoint_write_ms', 0, 60_000);
  oneOf('dataset', DATASETS);
  oneOf('activation', ACTIVATIONS);
  checkFaultParams(p, check); // test only
  return p;
}
