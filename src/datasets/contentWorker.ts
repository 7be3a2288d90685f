/**
 * Worker thread of the `content` resolver: streams every file through sha256 and reports bytes
 * hashed, so hashing a large dataset never blocks the control worker's event loop.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

interface Job {
  files: { rel: string; abs: string; size: number }[];
}

async function main(): Promise<void> {
  const { files } = workerData as Job;
  const h = createHash('sha256');
  h.update('content\0');
  let done = 0;
  let lastReport = 0;
  for (const f of files) {
    h.update(`${f.rel}\0${f.size}\0`);
    for await (const chunk of fs.createReadStream(f.abs, { highWaterMark: 1 << 20 })) {
      h.update(chunk as Buffer);
      done += (chunk as Buffer).length;
      if (Date.now() - lastReport > 200) {
        lastReport = Date.now();
        parentPort!.postMessage({ type: 'progress', bytes: done });
      }
    }
  }
  parentPort!.postMessage({ type: 'done', digest: h.digest('hex'), bytes: done });
}

main().catch((err: Error) => parentPort!.postMessage({ type: 'error', message: err.message }));
