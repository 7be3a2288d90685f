/**
 * The size and sha256 of a checkpoint (a file, or a folder: its files in name order), recorded in the
 * manifest when the checkpoint is verified and checked again before an attempt resumes from it, so a
 * checkpoint truncated or overwritten after it was announced is never a resume point.
 *
 * Hashing streams the checkpoint through sha256 in DIGEST_CHUNK_BYTES reads, each awaited, so the
 * event loop (heartbeats, the shim's pings, other jobs' events) runs between chunks whatever the
 * size: every checkpoint gets a sha256 (one of at most DIGEST_SYNC_MAX_BYTES may be hashed in one
 * synchronous pass instead, so it is verified at once). Manifests written before that may lack sha256 above 256 MiB
 * (or both fields): only what was recorded is checked.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Bytes per read: a few milliseconds of sha256 each, the longest the event loop waits on hashing. */
export const DIGEST_CHUNK_BYTES = 1 << 20;

export interface CheckpointDigest {
  bytes: number;
  sha256: string;
}

export interface DigestOptions {
  /** Called after each chunk with the bytes hashed so far (e.g. to heartbeat during a long hash). */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
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

async function hashInto(h: crypto.Hash, file: string, buf: Buffer, progress: (n: number) => void): Promise<void> {
  const fh = await fs.promises.open(file, 'r');
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead <= 0) break;
      h.update(buf.subarray(0, bytesRead));
      progress(bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/**
 * At or below this total a checkpoint may be hashed in one synchronous pass (milliseconds), so a
 * small checkpoint is verified (and retention prunes) at once, as the trainer announces it.
 */
export const DIGEST_SYNC_MAX_BYTES = 4 * 1024 * 1024;

/** Size and sha256 of a small checkpoint, synchronously; null when it is above DIGEST_SYNC_MAX_BYTES (use digestCheckpoint). Throws if it is unreadable. */
export function digestSmallCheckpoint(p: string): CheckpointDigest | null {
  const files = filesOf(p);
  const bytes = files.reduce((s, f) => s + f.size, 0);
  if (bytes > DIGEST_SYNC_MAX_BYTES) return null;
  const h = crypto.createHash('sha256');
  const single = files.length === 1 && files[0]!.abs === p;
  for (const f of files) {
    if (!single) h.update(`${f.rel}\0${f.size}\0`);
    h.update(fs.readFileSync(f.abs));
  }
  return { bytes, sha256: h.digest('hex') };
}

/** Size and sha256 of a checkpoint file or folder, streamed without blocking the event loop. Rejects if it is unreadable. */
export async function digestCheckpoint(p: string, o: DigestOptions = {}): Promise<CheckpointDigest> {
  const files = filesOf(p);
  const bytes = files.reduce((s, f) => s + f.size, 0);
  const h = crypto.createHash('sha256');
  const single = files.length === 1 && files[0]!.abs === p;
  const buf = Buffer.allocUnsafe(DIGEST_CHUNK_BYTES);
  let done = 0;
  const progress = (n: number) => {
    done += n;
    o.onProgress?.(done, bytes);
  };
  for (const f of files) {
    if (!single) h.update(`${f.rel}\0${f.size}\0`);
    await hashInto(h, f.abs, buf, progress);
  }
  return { bytes, sha256: h.digest('hex') };
}

/**
 * Why a checkpoint on disk no longer matches the size and sha256 recorded when it was verified, or
 * null when it matches (or nothing was recorded: checkpoints of older versions; a manifest without
 * sha256 is checked by size only).
 */
export async function checkpointMismatch(p: string, recorded: { bytes?: number; sha256?: string }, o: DigestOptions = {}): Promise<string | null> {
  if (recorded.bytes === undefined) return null;
  let now: CheckpointDigest;
  try {
    const files = filesOf(p);
    const bytes = files.reduce((s, f) => s + f.size, 0);
    if (bytes !== recorded.bytes) return `it has ${bytes} bytes, ${recorded.bytes} when it was verified (truncated or rewritten)`;
    if (recorded.sha256 === undefined) return null;
    now = await digestCheckpoint(p, o);
  } catch (err) {
    return `it cannot be read: ${err instanceof Error ? err.message : String(err)}`;
  }
  if (now.sha256 !== recorded.sha256) return `its sha256 is ${now.sha256.slice(0, 12)}…, ${recorded.sha256.slice(0, 12)}… when it was verified (overwritten)`;
  return null;
}
