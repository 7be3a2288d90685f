// Durable writes: every byte out (also to a non-blocking pipe), and files replaced atomically.

import fs from 'node:fs';
import path from 'node:path';

export function syncSleepMs(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** writeSync until every byte is out; retries EAGAIN (a non-blocking pipe that is momentarily full). */
export function writeAllSync(fd, buf) {
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
export function writeFileAtomic(file, text, holdMs = 0) {
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
