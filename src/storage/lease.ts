/**
 * The work-dir fence as one object with compare-and-swap, so it holds without a shared filesystem:
 * the first attempt creates it with If-None-Match: *, a newer attempt takes it over with If-Match on
 * the ETag it read. Of two attempts racing from the same state exactly one write lands; the loser
 * reads again and sees the winner. Newer generations win; an older attempt never takes a lease back.
 */
import * as crypto from 'node:crypto';
import { z } from 'zod';
import { ObjectNotFound, PreconditionFailed, StorageError } from './errors';
import type { ObjectStore } from './types';

export const ObjectLeaseRecordSchema = z.object({
  /** Unique per attempt. */
  holder: z.string().min(1),
  /** Orders attempts: the server's schedule time of the attempt (see generationOf in supervisor/workdir). */
  generation: z.number(),
  attempt: z.number().int(),
  workerId: z.string(),
  /** When it was taken or last renewed. */
  at: z.string(),
  /** Set by release(): an attempt of the same generation may take it. */
  released: z.boolean().optional(),
});
export type ObjectLeaseRecord = z.infer<typeof ObjectLeaseRecordSchema>;

export type LeaseClaim = Omit<ObjectLeaseRecord, 'holder' | 'at' | 'released'> & { holder?: string };
export type LeaseOutcome = { acquired: true; lease: ObjectLease } | { acquired: false; owner: ObjectLeaseRecord };

const MAX_ROUNDS = 20;

async function read(store: ObjectStore, key: string): Promise<{ record: ObjectLeaseRecord | null; etag: string } | null> {
  try {
    const { body, etag } = await store.get(key);
    let record: ObjectLeaseRecord | null = null;
    try {
      const r = ObjectLeaseRecordSchema.safeParse(JSON.parse(body.toString('utf8')));
      record = r.success ? r.data : null;
    } catch {
      // An unreadable lease is taken over like an older one.
    }
    return { record, etag };
  } catch (err) {
    if (err instanceof ObjectNotFound) return null;
    throw err;
  }
}

const encode = (r: ObjectLeaseRecord) => Buffer.from(JSON.stringify(r));

export class ObjectLease {
  /** The attempt that holds `key` now, if any. */
  static async owner(store: ObjectStore, key: string): Promise<ObjectLeaseRecord | null> {
    return (await read(store, key))?.record ?? null;
  }

  /**
   * Takes the lease unless a newer generation (or the same one, not released) holds it. Holding it
   * already (same holder) is success.
   */
  static async acquire(store: ObjectStore, key: string, claim: LeaseClaim): Promise<LeaseOutcome> {
    const record: ObjectLeaseRecord = { holder: claim.holder ?? crypto.randomUUID(), generation: claim.generation, attempt: claim.attempt, workerId: claim.workerId, at: new Date().toISOString() };
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const cur = await read(store, key);
      const c = cur?.record;
      if (cur && c?.holder === record.holder) return { acquired: true, lease: new ObjectLease(store, key, c, cur.etag) };
      if (c && (c.generation > record.generation || (c.generation === record.generation && !c.released))) return { acquired: false, owner: c };
      try {
        const etag = await store.put(key, encode(record), cur ? { ifMatch: cur.etag } : { ifNoneMatch: '*' });
        return { acquired: true, lease: new ObjectLease(store, key, record, etag) };
      } catch (err) {
        if (!(err instanceof PreconditionFailed)) throw err;
      }
    }
    throw new StorageError(`${store.uri}/${key}: the lease changed ${MAX_ROUNDS} times while this attempt tried to take it`, store.uri);
  }

  private constructor(
    private readonly store: ObjectStore,
    readonly key: string,
    private current: ObjectLeaseRecord,
    private etagNow: string,
  ) {}

  get record(): ObjectLeaseRecord {
    return this.current;
  }
  get etag(): string {
    return this.etagNow;
  }

  /** True once another attempt holds the lease (or it is gone). */
  async superseded(): Promise<boolean> {
    const cur = await read(this.store, this.key);
    return !cur?.record || cur.record.holder !== this.current.holder;
  }

  /** Rewrites `at` if the lease is still ours; false when another attempt took it. */
  async renew(): Promise<boolean> {
    return this.write({ ...this.current, at: new Date().toISOString() });
  }

  /** Marks the lease released if still ours, so an attempt of the same generation may take it. */
  async release(): Promise<boolean> {
    return this.write({ ...this.current, released: true, at: new Date().toISOString() });
  }

  private async write(next: ObjectLeaseRecord): Promise<boolean> {
    try {
      this.etagNow = await this.store.put(this.key, encode(next), { ifMatch: this.etagNow });
      this.current = next;
      return true;
    } catch (err) {
      if (err instanceof PreconditionFailed) return false;
      throw err;
    }
  }
}
