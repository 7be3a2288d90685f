/** The check doctor and worker start run against any store: write, read, conditional writes, delete. */
import * as crypto from 'node:crypto';
import * as os from 'node:os';
import { PreconditionFailed, StorageError, StorageUnavailable } from './errors';
import type { ObjectStore, ProbeResult } from './types';

async function expectRefused(store: ObjectStore, attempt: () => Promise<unknown>, what: string): Promise<void> {
  try {
    await attempt();
  } catch (err) {
    if (err instanceof PreconditionFailed) return;
    throw err;
  }
  throw new StorageUnavailable(
    `${store.uri}: conditional writes are not honoured (${what}); the lease that fences stale attempts needs them: use a store that honours If-None-Match and If-Match on PutObject (AWS S3, a recent MinIO, Cloudflare R2)`,
    store.uri,
    'conditional',
  );
}

export async function probeStore(store: ObjectStore): Promise<ProbeResult> {
  const t0 = Date.now();
  const key = `.kiln-probe/${os.hostname().replace(/[^\w.-]/g, '_')}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const data = Buffer.from(`kiln storage probe ${new Date().toISOString()}\n`);
  const etag = await store.put(key, data, { ifNoneMatch: '*' });
  try {
    const got = await store.get(key);
    if (!got.body.equals(data)) throw new StorageError(`${store.uri}: the probe object read back differs from what was written`, store.uri);
    await expectRefused(store, () => store.put(key, Buffer.from('second'), { ifNoneMatch: '*' }), 'a second create-only put, If-None-Match: *, was accepted');
    await expectRefused(store, () => store.put(key, Buffer.from('stale'), { ifMatch: '"0123456789abcdef0123456789abcdef"' }), 'a put with a stale If-Match was accepted');
    await store.put(key, Buffer.from('third'), { ifMatch: etag });
  } finally {
    await store.delete(key);
  }
  if (await store.head(key)) throw new StorageError(`${store.uri}: the probe object ${key} is still there after delete`, store.uri);
  return { uri: store.uri, conditionalWrites: true, ms: Date.now() - t0 };
}
