/**
 * Job logs (`trainer.log`, `evaluate.log`) as objects, so `kiln logs` on any host can read them: the
 * whole file goes up periodically while it grows and once at the end.
 */
import * as fs from 'node:fs';
import { ObjectNotFound } from './errors';
import type { ObjectStore } from './types';

/** `jobs/<id>/logs/trainer/`: where each attempt's part of a job log goes, `attempt-0001.log` and on. */
export function logPrefix(jobId: string, kind: 'trainer' | 'evaluate'): string {
  return `jobs/${jobId}/logs/${kind}/`;
}

export function logKey(jobId: string, kind: 'trainer' | 'evaluate', attempt: number): string {
  return `${logPrefix(jobId, kind)}attempt-${String(attempt).padStart(4, '0')}.log`;
}

/**
 * Uploads the log as it is now; undefined when the file does not exist (yet). With `from`, only the
 * bytes from that offset on (one attempt's part of a log several attempts on this host appended to);
 * a file shorter than `from` (truncated by the log cap) goes up whole.
 */
export async function uploadLog(store: ObjectStore, key: string, file: string, from = 0): Promise<{ etag: string; bytes: number } | undefined> {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (!st?.isFile()) return undefined;
  if (from <= 0 || from > st.size) return { etag: await store.put(key, { file }), bytes: st.size };
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(st.size - from);
    fs.readSync(fd, buf, 0, buf.length, from);
    return { etag: await store.put(key, buf), bytes: buf.length };
  } finally {
    fs.closeSync(fd);
  }
}

/** Every log object under `prefix` (one per attempt, keys sort in attempt order), concatenated; undefined when none. */
export async function readLogs(store: ObjectStore, prefix: string): Promise<{ text: string; parts: number } | undefined> {
  const objs = (await store.list(prefix)).filter((o) => o.key.endsWith('.log'));
  if (!objs.length) return undefined;
  const texts: string[] = [];
  for (const o of objs) texts.push((await readLog(store, o.key)) ?? '');
  return { text: texts.join(''), parts: objs.length };
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
 * Uploads `file` every `everyMs` while it changed; `stop()` uploads once more and resolves when done,
 * with whether the file as it was then is in storage. Failures go to `onError` and the next round
 * tries again: a log upload never stops a job.
 */
export function uploadLogPeriodically(store: ObjectStore, key: string, file: string, everyMs: number, onError: (err: unknown) => void = () => {}, from = 0): { stop(): Promise<boolean> } {
  let last = '';
  let running: Promise<void> = Promise.resolve();
  const stampOf = () => {
    const st = fs.statSync(file, { throwIfNoEntry: false });
    return st ? `${st.size}:${st.mtimeMs}` : '';
  };
  const round = () => {
    running = running.then(async () => {
      const stamp = stampOf();
      if (!stamp || stamp === last) return;
      try {
        await uploadLog(store, key, file, from);
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
      return stampOf() === last;
    },
  };
}
