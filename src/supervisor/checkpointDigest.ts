/**
 * The size and sha256 of a checkpoint (a file, or a folder: its files in name order), recorded in the
 * manifest when the checkpoint is verified and checked again before an attempt resumes from it, so a
 * checkpoint truncated or overwritten after it was announced is never a resume point.
 *
 * Hashing reads the whole checkpoint, synchronously (it runs in the event handler that verifies the
 * checkpoint, whose order it must keep). Above DIGEST_MAX_BYTES only the size is recorded and checked:
 * that still catches truncation, the common corruption, without reading gigabytes on the event loop.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const DIGEST_MAX_BYTES = 256 * 1024 * 1024;

export interface CheckpointDigest {
  bytes: number;
  /** Absent when the checkpoint is larger than DIGEST_MAX_BYTES. */
  sha256?: string;
}

function filesOf(p: string): { rel: string; abs: string; size: number }[] {
  const st = fs.statSync(p);
  if (st.isFile()) return [{ rel: path.basename(p), abs: p, size: st.size }];
  const out: { rel: string; abs: string; size: number }[] = [];
  const walk = (dir: string, rel: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const abs = path.join(dir, e.name);
      if (e.isDirectory()) walk(abs, `${rel}${e.name}/`);
      else if (e.isFile()) out.push({ rel: rel + e.name, abs, size: fs.statSync(abs).size });
    }
  };
  walk(p, '');
  return out.sort((a, b) => (a.rel < b.rel ? -1 : 1));
}

function hashInto(h: crypto.Hash, file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Size and (up to DIGEST_MAX_BYTES) sha256 of a checkpoint file or folder. Throws if it is unreadable. */
export function digestCheckpoint(p: string): CheckpointDigest {
  const files = filesOf(p);
  const bytes = files.reduce((s, f) => s + f.size, 0);
  if (bytes > DIGEST_MAX_BYTES) return { bytes };
  const h = crypto.createHash('sha256');
  const single = files.length === 1 && files[0]!.abs === p;
  for (const f of files) {
    if (!single) h.update(`${f.rel}\0${f.size}\0`);
    hashInto(h, f.abs);
  }
  return { bytes, sha256: h.digest('hex') };
}

/**
 * Why a checkpoint on disk no longer matches the size and sha256 recorded when it was verified, or
 * null when it matches (or nothing was recorded: checkpoints of older versions).
 */
export function checkpointMismatch(p: string, recorded: { bytes?: number; sha256?: string }): string | null {
  if (recorded.bytes === undefined) return null;
  let now: CheckpointDigest;
  try {
    const files = filesOf(p);
    const bytes = files.reduce((s, f) => s + f.size, 0);
    if (bytes !== recorded.bytes) return `it has ${bytes} bytes, ${recorded.bytes} when it was verified (truncated or rewritten)`;
    if (recorded.sha256 === undefined) return null;
    now = digestCheckpoint(p);
  } catch (err) {
    return `it cannot be read: ${err instanceof Error ? err.message : String(err)}`;
  }
  if (now.sha256 !== undefined && now.sha256 !== recorded.sha256) return `its sha256 is ${now.sha256.slice(0, 12)}…, ${recorded.sha256.slice(0, 12)}… when it was verified (overwritten)`;
  return null;
}
