/**
 * Dataset fingerprints: a content hash of a file or folder (names, sizes and bytes), or of the
 * dataset string itself when it is an opaque URI. One model + one fingerprint trains once.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

function hashTree(h: ReturnType<typeof createHash>, p: string, rel: string): void {
  const st = fs.statSync(p);
  if (st.isDirectory()) {
    for (const n of fs.readdirSync(p).sort()) hashTree(h, path.join(p, n), path.posix.join(rel, n));
    return;
  }
  h.update(`${rel}\0${st.size}\0`);
  h.update(fs.readFileSync(p));
}

export function datasetFingerprint(dataset: string, baseDir: string): string {
  const h = createHash('sha256');
  const local = dataset.startsWith('file://') ? dataset.slice(7) : /^[a-z][a-z0-9+.-]*:\/\//i.test(dataset) ? null : dataset;
  const p = local !== null ? path.resolve(baseDir, local) : null;
  if (p && fs.existsSync(p)) {
    h.update('content\0');
    hashTree(h, p, '.');
  } else {
    h.update('uri\0');
    h.update(dataset);
  }
  return h.digest('hex').slice(0, 16);
}
