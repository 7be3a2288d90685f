/** Streaming sha256 of files, and copies that hash what they write, so each byte is read once. */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export function sha256(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

export async function sha256File(file: string): Promise<{ sha256: string; size: number }> {
  const h = crypto.createHash('sha256');
  let size = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), size };
}

/** A pass-through that hashes and counts, reporting bytes so far. */
export function hashingTap(onBytes?: (done: number) => void): Transform & { digest(): { sha256: string; size: number } } {
  const h = crypto.createHash('sha256');
  let size = 0;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      size += chunk.length;
      onBytes?.(size);
      cb(null, chunk);
    },
  });
  return Object.assign(t, { digest: () => ({ sha256: h.digest('hex'), size }) });
}

export function tempNameFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.part`);
}

/**
 * Writes `source` to `target` through a temp file in the same folder (fsynced, then renamed), so a
 * reader never sees a half file. Returns what was written.
 */
export async function writeStreamAtomic(source: Readable, target: string, onBytes?: (done: number) => void): Promise<{ sha256: string; size: number }> {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const tmp = tempNameFor(target);
  const tap = hashingTap(onBytes);
  try {
    await pipeline(source, tap, fs.createWriteStream(tmp));
    const fd = fs.openSync(tmp, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, target);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  return tap.digest();
}
