/**
 * Job logs (`trainer.log`, `evaluate.log`) as objects, so `kiln logs` on any host can read them: the
 * whole file goes up periodically while it grows and once at the end.
 */
import * as fs from 'node:fs';
import { ObjectNotFound } from './errors';
import type { ObjectStore } from './types';

/** Uploads the log as it is now; undefined when the file does not exist (yet). */
export async function uploadLog(store: ObjectStore, key: string, file: string): Promise<{ etag: string; bytes: number } | undefined> {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (!st?.isFile()) return undefined;
  const etag = await store.put(key, { file });
  return { etag, bytes: st.size };
}

/** The log's text, or undefined when none was uploaded. */
export async function readLog(store: ObjectStore, key: string): Promise<string | undefined> {
  try {
    return (await store.get(key)).body.toString('utf8');
  } catch (err) {
    if (err instanceof ObjectNotFound) return undefined;
    throw err;
  }
}

/**
 * Uploads `file` every `everyMs` while it changed; `stop()` uploads once more and resolves when done.
 * Failures go to `onError` and the next round tries again: a log upload never stops a job.
 */
export function uploadLogPeriodically(store: ObjectStore, key: string, file: string, everyMs: number, onError: (err: unknown) => void = () => {}): { stop(): Promise<void> } {
  let last = '';
  let running: Promise<void> = Promise.resolve();
  const round = () => {
    running = running.then(async () => {
      const st = fs.statSync(file, { throwIfNoEntry: false });
      const stamp = st ? `${st.size}:${st.mtimeMs}` : '';
      if (!st || stamp === last) return;
      try {
        await uploadLog(store, key, file);
        last = stamp;
      } catch (err) {
        onError(err);
      }
    });
    return running;
  };
  const timer = setInterval(() => void round(), everyMs);
  timer.unref();
  return {
    stop: async () => {
      clearInterval(timer);
      await round();
    },
  };
}
