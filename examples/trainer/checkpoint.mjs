// Checkpoints: `<KILN_CHECKPOINT_DIR>/step-N.ckpt.json`, written atomically and announced on fd 3 only
// once complete; a checksum in the file catches a torn write when resuming.

import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { EXIT, die, warn, events } from './protocol.mjs';
import { writeFileAtomic } from './files.mjs';
import { checkModelShape } from './model.mjs';

const CKPT_FORMAT = 'kiln-example-trainer/checkpoint';
const CKPT_VERSION = 1;

const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');

export function serializeCheckpoint(payload) {
  const body = JSON.stringify(payload);
  return `{"format":"${CKPT_FORMAT}","version":${CKPT_VERSION},"sha256":"${sha256(body)}","payload":${body}}\n`;
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
  if (doc.version !== CKPT_VERSION) throw new Error(`checkpoint ${file} has unsupported version ${doc.version}`);
  const actual = sha256(JSON.stringify(doc.payload));
  if (doc.sha256 !== actual) {
    throw new Error(`checkpoint ${file} is corrupt (sha256 mismatch: file says ${doc.sha256}, content is ${actual})`);
  }
  return doc.payload;
}

/**
 * The training state saved in checkpoint `file` (KILN_RESUME_FROM): { model, step, loss, validation }.
 * Exits 1 if the file is unusable (Kiln then retries from an older one), 2 if it cannot fit these params.
 */
export function resumeState(file, p, data, totalSteps) {
  let ck;
  try {
    ck = loadCheckpoint(file);
  } catch (err) {
    die(EXIT.FAILED, `cannot resume: ${err.message}`);
  }
  // Params that shape the model or the data must match; others may change, at the price of exactness.
  const structural = { dataset: p.dataset, samples: p.samples, seed: p.seed, hidden: p.hidden, activation: p.activation };
  for (const [k, v] of Object.entries(structural)) {
    if (ck.params?.[k] !== v) {
      die(EXIT.INVALID, `cannot resume from ${file}: param "${k}" is ${JSON.stringify(v)} but the checkpoint was trained with ${JSON.stringify(ck.params?.[k])}`);
    }
  }
  for (const k of ['lr', 'batch_size', 'steps_per_epoch']) {
    if (ck.params?.[k] !== p[k]) {
      warn(`param "${k}" changed since the checkpoint (${JSON.stringify(ck.params?.[k])} -> ${JSON.stringify(p[k])}); the run will not match an uninterrupted one`);
    }
  }
  if (!Number.isInteger(ck.step) || ck.step < 1 || !checkModelShape(ck.model, data.dim, data.classes, p.hidden)) {
    die(EXIT.FAILED, `cannot resume: checkpoint ${file} has an invalid step or model`);
  }
  if (ck.step > totalSteps) {
    die(EXIT.INVALID, `cannot resume: checkpoint ${file} is at step ${ck.step}, beyond total_steps ${totalSteps} (epochs=${p.epochs} x steps_per_epoch=${p.steps_per_epoch})`);
  }
  return { model: ck.model, step: ck.step, loss: ck.metrics?.loss ?? null, validation: ck.validation ?? null };
}

/** Writes the checkpoints of one run of `state` ({ model, step, loss, validation }) and announces them. */
export class Checkpoints {
  constructor(dir, p, totalSteps, schedule, state) {
    this.dir = dir;
    this.p = p;
    this.totalSteps = totalSteps;
    this.schedule = schedule;
    this.state = state;
    this.lastStep = 0; // the step of the newest checkpoint written by this process
    this.lastPath = null;
  }

  path(n) {
    return path.join(this.dir, `step-${n}.ckpt.json`);
  }

  /** What a checkpoint after `n` steps holds: enough to continue exactly as if never stopped. */
  payload(n) {
    const s = this.state;
    return {
      step: n,
      epoch: Math.ceil(n / this.p.steps_per_epoch),
      total_steps: this.totalSteps,
      job_id: process.env.KILN_JOB_ID || null,
      params: { ...this.p },
      rng: { kind: 'mulberry32/derived', shuffle: this.schedule.position(n) },
      metrics: { loss: s.loss },
      validation: s.validation,
      model: s.model,
    };
  }

  /** Writes the checkpoint after `n` steps (unless this process already did) and announces it on fd 3. */
  save(n) {
    if (this.lastStep !== n) {
      writeFileAtomic(this.path(n), serializeCheckpoint(this.payload(n)), this.p.checkpoint_write_ms);
      this.lastStep = n;
      this.lastPath = this.path(n);
    }
    events.emit({ type: 'checkpoint', step: n, path: this.lastPath, metrics: { loss: this.state.loss } });
  }
}
