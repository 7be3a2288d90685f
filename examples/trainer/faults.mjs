// Fault injection: TEST ONLY. Kiln's own tests use these params to make this trainer fail the ways a
// real one does (crash, hang, exit 2, garbage on fd 3, a torn checkpoint). A trainer of your own needs
// none of it: leave out this file, its params (FAULT_DEFAULTS, checkFaultParams) and the `faults.` calls.
//
//   fault            one of FAULTS, or null (no fault)
//   fault_at_step    the step it fires at (required with `fault`)
//   fault_attempts   the KILN_ATTEMPT numbers it fires on (default [1]: the retry runs clean)

import fs from 'node:fs';
import { EXIT, die, warn, events } from './protocol.mjs';
import { serializeCheckpoint } from './checkpoint.mjs';

const FAULTS = ['crash', 'hang', 'exit2', 'garbage', 'truncate', 'poison'];

export const FAULT_DEFAULTS = Object.freeze({
  fault: null,
  fault_at_step: null,
  fault_attempts: [1],
});

/** Validates the fault params with the checks of params.mjs. */
export function checkFaultParams(p, { fail, int, oneOf }) {
  if (p.fault !== null) {
    oneOf('fault', FAULTS);
    if (p.fault_at_step === null) fail('param "fault_at_step" is required when "fault" is set');
  }
  if (p.fault_at_step !== null) int('fault_at_step', 1, Number.MAX_SAFE_INTEGER);
  if (!Array.isArray(p.fault_attempts) || !p.fault_attempts.every((a) => Number.isInteger(a) && a >= 1)) {
    fail(`param "fault_attempts" must be an array of attempt numbers >= 1, got ${JSON.stringify(p.fault_attempts)}`);
  }
}

export class Faults {
  constructor(p, attempt) {
    this.p = p;
    this.armed = p.fault !== null && p.fault_attempts.includes(attempt);
  }

  firesAt(step, kind) {
    return this.armed && step === this.p.fault_at_step && this.p.fault === kind;
  }

  /** Right after step `step`, before its validation and checkpoint: a torn checkpoint, or exit 2. */
  beforeCheckpoint(step, checkpoints) {
    if (this.firesAt(step, 'truncate')) {
      // A torn write: part of a checkpoint at the next checkpoint's final path, never announced.
      const every = this.p.checkpoint_every;
      const next = Math.min(Math.ceil(step / every) * every, checkpoints.totalSteps);
      const text = serializeCheckpoint(checkpoints.payload(next));
      fs.writeFileSync(checkpoints.path(next), text.slice(0, Math.floor(text.length / 2)));
      die(EXIT.FAILED, `injected fault: truncated checkpoint ${checkpoints.path(next)} at step ${step}, exiting`);
    }
    if (this.firesAt(step, 'exit2')) die(EXIT.INVALID, `injected fault: exit 2 at step ${step}`);
    if (this.firesAt(step, 'poison')) {
      // A checkpoint that was bad when it was announced (its own sha256 is wrong): complete on disk, so
      // Kiln verifies it, but no later attempt can resume from it.
      const doc = JSON.parse(serializeCheckpoint(checkpoints.payload(step)));
      doc.sha256 = '0'.repeat(64);
      fs.writeFileSync(`${checkpoints.path(step)}.tmp`, JSON.stringify(doc));
      fs.renameSync(`${checkpoints.path(step)}.tmp`, checkpoints.path(step));
      events.emit({ type: 'checkpoint', step, path: checkpoints.path(step), metrics: {} });
      die(EXIT.FAILED, `injected fault: announced a poisoned checkpoint ${checkpoints.path(step)} at step ${step}, exiting`);
    }
  }

  /**
   * After step `step` and its checkpoint: garbage on fd 3, a crash, or a hang between steps that only
   * a signal ends (`stop` from handleStop in train.mjs). Returns true when the trainer now hangs: the
   * training loop must return.
   */
  afterCheckpoint(step, stop) {
    if (this.firesAt(step, 'garbage')) writeGarbage(step);
    if (this.firesAt(step, 'crash')) die(EXIT.FAILED, `injected fault: crash after step ${step}`);
    if (!this.firesAt(step, 'hang')) return false;
    warn(`injected fault: hanging after step ${step} (SIGTERM still works)`);
    stop.hanging = true;
    if (stop.requested) stop.now();
    setInterval(() => {}, 1 << 30);
    return true;
  }
}

/** Every kind of malformed event line: Kiln must log and count them, and keep training. */
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
