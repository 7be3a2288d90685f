/** The `content` resolver's driver: runs contentWorker in a thread, with a time cap and progress. */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { DatasetRefused } from './locate';
import type { DatasetFile } from './walk';

type Msg = { type: 'progress'; bytes: number } | { type: 'done'; digest: string; bytes: number } | { type: 'error'; message: string };

export function hashContent(dataset: string, files: DatasetFile[], timeoutMs: number, onProgress?: (bytes: number, total: number) => void): Promise<string> {
  const total = files.reduce((n, f) => n + f.size, 0);
  const worker = new Worker(path.join(__dirname, 'contentWorker.js'), { workerData: { files: files.map(({ rel, abs, size }) => ({ rel, abs, size })) } });
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      void worker.terminate();
      reject(new DatasetRefused(`dataset ${dataset}: hashing ${total} bytes took longer than datasets.timeout (${timeoutMs} ms); raise it, or use the metadata resolver`));
    }, timeoutMs);
    worker.on('message', (m: Msg) => {
      if (m.type === 'progress') onProgress?.(m.bytes, total);
      else {
        clearTimeout(timer);
        void worker.terminate();
        if (m.type === 'done') resolve(m.digest);
        else reject(new Error(`dataset ${dataset}: cannot hash: ${m.message}`));
      }
    });
    worker.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
