// The trainer's side of docs/trainer-protocol.md (v1): the KILN_* environment, events on fd 3, exit
// codes, SIGTERM and stdin EOF. Copy this file as it is into a trainer of your own.

import fs from 'node:fs';
import path from 'node:path';
import { writeAllSync } from './files.mjs';

/** Exit codes Kiln understands. */
export const EXIT = Object.freeze({
  OK: 0, // success, also after SIGTERM + checkpoint
  FAILED: 1, // anything else: Kiln retries the attempt from the last checkpoint
  INVALID: 2, // invalid params or input: the job fails at once, without retries
});

export function log(msg) {
  process.stdout.write(`${msg}\n`);
}

export function warn(msg) {
  process.stderr.write(`train.mjs: ${msg}\n`);
}

export function die(code, msg) {
  warn(msg);
  process.exit(code);
}

// ---------------------------------------------------------------------------------------------
// Environment

/** A KILN_* variable, or null when it is unset or empty (running by hand). */
export function envValue(name) {
  const v = process.env[name];
  return v === undefined || v === '' ? null : v;
}

/** The directory named by env `name` (or `fallback` by hand), resolved and created. */
export function dirFromEnv(name, fallback) {
  const dir = path.resolve(envValue(name) ?? fallback);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** KILN_ATTEMPT: the attempt number of the training activity, from 1. */
export function attemptFromEnv() {
  const raw = process.env.KILN_ATTEMPT;
  if (raw === undefined || raw === '') return 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    warn(`KILN_ATTEMPT=${JSON.stringify(raw)} is not an attempt number; assuming 1`);
    return 1;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Events on fd 3: one JSON object per line; a no-op when fd 3 is not open

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

export const events = {
  fd: openEvents(),
  /** progress, checkpoint, metrics, artifact: see docs/trainer-protocol.md for the shapes. */
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
// Stopping: SIGTERM asks for a checkpoint and exit 0; stdin EOF means the supervisor is gone

let wakeSleeper = null;

/** Sleep for `ms`; returns early on SIGTERM (a stop must not wait for a long delay). */
export function sleep(ms) {
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

/**
 * SIGTERM (and Ctrl-C by hand) means "save a checkpoint if you can, announce it, and exit 0".
 * `onStop(signal)` runs on the first one only; then a pending `sleep()` returns at once.
 */
export function onStopSignal(onStop) {
  let stopping = false;
  const handle = (sig) => {
    if (stopping) return;
    stopping = true;
    onStop(sig);
    if (wakeSleeper) wakeSleeper();
  };
  process.on('SIGTERM', () => handle('SIGTERM'));
  process.on('SIGINT', () => handle('SIGINT'));
}

/** Exit 1 when stdin reaches EOF: a Kiln supervisor holds it open while it lives. */
export function watchStdin() {
  let st;
  try {
    st = fs.fstatSync(0);
  } catch {
    return;
  }
  // Node's child_process "pipe" is a socketpair, so sockets count as pipes too; a TTY, /dev/null or
  // a regular file is ignored.
  if (!(st.isFIFO() || st.isSocket())) return;
  process.stdin.on('data', () => {});
  process.stdin.on('error', () => {});
  process.stdin.on('end', () => die(EXIT.FAILED, 'stdin closed: the supervisor is gone, exiting'));
  process.stdin.resume();
}
