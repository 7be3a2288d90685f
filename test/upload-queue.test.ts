/**
 * Local disk stays bounded when a trainer checkpoints faster than storage takes the uploads: the
 * checkpoint uploader (activities/train/upload.ts) with the retention rule the train activity wires in
 * (supersededInQueue, activities/train/events.ts), over a real LocalStore whose file uploads the test
 * holds back (a store that makes no progress, as the fleet test's stalled proxy does for S3).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { supersededInQueue } from '../activities/train/events';
import { CheckpointUploader } from '../activities/train/upload';
import { createLogger } from '../src/logger';
import type { CheckpointRef } from '../src/shared/progress';
import type { Retention } from '../src/shared/spec';
import { completedCheckpoints, LocalStore, type Body, type ObjectStore, type PutOptions } from '../src/storage';
import { selectKept } from '../src/supervisor/retention';
import { waitFor } from './helpers/kiln';

/** A real LocalStore whose checkpoint file puts wait while `held`; every put key is recorded. */
class HeldStore implements ObjectStore {
  held = true;
  waiting = 0;
  readonly putKeys: string[] = [];
  private release: () => void = () => undefined;
  private readonly gate = new Promise<void>((r) => (this.release = r));
  constructor(private readonly inner: LocalStore) {}
  get uri(): string {
    return this.inner.uri;
  }
  async put(key: string, body: Body, opts?: PutOptions): Promise<string> {
    this.putKeys.push(key);
    if (this.held && key.includes('/files/')) {
      this.waiting += 1;
      await this.gate;
    }
    return this.inner.put(key, body, opts);
  }
  open(): void {
    this.held = false;
    this.release();
  }
  get = (key: string) => this.inner.get(key);
  download: ObjectStore['download'] = (key, local, opts) => this.inner.download(key, local, opts);
  head = (key: string) => this.inner.head(key);
  list = (prefix: string) => this.inner.list(prefix);
  delete = (key: string) => this.inner.delete(key);
  deletePrefix = (prefix: string) => this.inner.deletePrefix(prefix);
  probe = () => this.inner.probe();
  close = () => this.inner.close();
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-upload-queue-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('checkpoints announced faster than they upload: waiting ones retention drops are never uploaded and leave the disk at once; local copies stay within latest N + best K + 1; the best one still goes up', async () => {
  const retention: Retention = { keepLatest: 2, keepBest: 1, metric: 'loss', direction: 'min' };
  const workDir = path.join(tmp, 'work');
  const ckptDir = path.join(workDir, 'checkpoints');
  fs.mkdirSync(ckptDir, { recursive: true });
  const store = new HeldStore(new LocalStore(path.join(tmp, 'store')));
  const errors: unknown[] = [];
  const uploader = new CheckpointUploader(store, {
    jobId: 'job-q',
    workDir,
    log: createLogger({ name: 'upload-queue-test', level: 'error', pretty: false }),
    concurrency: 2,
    stillOwner: () => true,
    onError: (err) => errors.push(err),
  });
  // What the train activity does with a verified checkpoint: retention over the verified ones.
  let verified: CheckpointRef[] = [];
  uploader.onVerified = async (ref) => {
    const { keep, drop } = selectKept([...verified, ref], retention, () => false);
    for (const d of drop) fs.rmSync(d.path, { force: true });
    await uploader.deleteStored(drop);
    verified = keep;
  };
  uploader.supersededInQueue = (queued, inFlight) => supersededInQueue(verified, inFlight, queued, retention, () => false);

  const announce = (step: number, loss: number): CheckpointRef => {
    const p = path.join(ckptDir, `step-${step}.bin`);
    fs.writeFileSync(p, Buffer.alloc(64 * 1024, step));
    const ref = { step, path: p, metrics: { loss } };
    uploader.enqueue(ref);
    return ref;
  };
  const local = () => fs.readdirSync(ckptDir).sort((a, b) => Number(/\d+/.exec(a)![0]) - Number(/\d+/.exec(b)![0]));
  const limit = retention.keepLatest + retention.keepBest + 1;

  announce(10, 0.5);
  await waitFor(() => store.waiting > 0, 10_000, 'the first upload to be under way (and held)');
  // Step 20 has the best loss: retention keeps it (best K) whatever comes after.
  const peaks: number[] = [];
  for (const [step, loss] of [[20, 0.01], [30, 0.3], [40, 0.2], [50, 0.1], [60, 0.09], [70, 0.08]] as const) {
    announce(step, loss);
    peaks.push(local().length);
  }
  assert.deepEqual(local(), ['step-10.bin', 'step-20.bin', 'step-60.bin', 'step-70.bin'], 'uploading 10; waiting: the best (20) and the latest two');
  assert.ok(Math.max(...peaks) <= limit, `local checkpoints after each announcement: ${peaks.join(', ')}; limit N + K + 1 = ${limit}`);
  assert.equal(uploader.skipped, 3);

  store.open();
  await uploader.drain();
  assert.deepEqual(errors, []);
  assert.deepEqual(verified.map((c) => c.step), [20, 60, 70], 'verified and kept: best 20, latest 60 and 70');
  const uploaded = new Set(store.putKeys.map((k) => /checkpoints\/step-(\d+)\.bin\//.exec(k)?.[1]).filter(Boolean).map(Number));
  assert.deepEqual([...uploaded].sort((a, b) => a - b), [10, 20, 60, 70], 'steps 30, 40 and 50 were never uploaded');
  const stored = (await completedCheckpoints(store, 'jobs/job-q/checkpoints')).map((p) => Number(/step-(\d+)/.exec(p)![1]));
  assert.deepEqual(stored.sort((a, b) => a - b), [20, 60, 70], 'storage holds what retention kept');
  assert.deepEqual(local(), ['step-20.bin', 'step-60.bin', 'step-70.bin']);
});

test('supersededInQueue never drops the checkpoint being uploaded, a pinned one, or the newest waiting one', () => {
  const r: Retention = { keepLatest: 1, keepBest: 0, metric: 'loss', direction: 'min' };
  const c = (step: number): CheckpointRef => ({ step, path: `/w/checkpoints/step-${step}`, metrics: { loss: 1 / step } });
  const verified = [c(10)];
  const inFlight = c(20);
  const queued = [c(30), c(40), c(50)];
  assert.deepEqual(supersededInQueue(verified, inFlight, queued, r, () => false).map((x) => x.step), [30, 40]);
  assert.deepEqual(supersededInQueue(verified, inFlight, queued, r, (p) => p.endsWith('step-30')).map((x) => x.step), [40]);
  assert.deepEqual(supersededInQueue(verified, null, [c(30)], r, () => false), []);
});
