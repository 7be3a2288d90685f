/**
 * The fence across hosts with shared storage: besides `lease.json` in the local work dir, each
 * attempt takes the job's lease object in the store (`jobs/<id>/lease.json`) by compare-and-swap
 * (src/storage/lease.ts: If-None-Match: * to create, If-Match on the ETag to take over). An attempt
 * that finds a newer generation there starts nothing; a running attempt polls the object and, once a
 * newer attempt on any host holds it, counts as superseded (it stops its trainer and records nothing).
 */
import type { Logger } from '../../src/logger';
import { ObjectLease, type ObjectLeaseRecord, type ObjectStore } from '../../src/storage';

export const leaseKey = (jobId: string) => `jobs/${jobId}/lease.json`;

export class StoreFence {
  /** True once another attempt holds the lease object (set by the poll). */
  superseded = false;
  private timer: NodeJS.Timeout | null = null;
  private busy = false;

  private constructor(
    readonly lease: ObjectLease,
    private readonly log: Logger,
  ) {}

  /** Takes the job's lease object, or returns the newer attempt that holds it. */
  static async take(store: ObjectStore, jobId: string, claim: { generation: number; attempt: number; workerId: string; holder: string }, log: Logger): Promise<{ fence: StoreFence } | { owner: ObjectLeaseRecord }> {
    const r = await ObjectLease.acquire(store, leaseKey(jobId), claim);
    return r.acquired ? { fence: new StoreFence(r.lease, log) } : { owner: r.owner };
  }

  /** Polls the lease object every `intervalMs`; a failed read is only logged (the next one decides). */
  watch(intervalMs = 1000): this {
    this.timer = setInterval(() => void this.poll(), intervalMs);
    this.timer.unref();
    return this;
  }

  async poll(): Promise<boolean> {
    if (this.busy || this.superseded) return this.superseded;
    this.busy = true;
    try {
      if (await this.lease.superseded()) {
        this.superseded = true;
        this.log.warn({ key: this.lease.key }, 'a newer attempt holds the job’s lease in storage');
      }
    } catch (err) {
      this.log.debug({ err: String(err) }, 'cannot read the job’s lease in storage');
    } finally {
      this.busy = false;
    }
    return this.superseded;
  }

  /**
   * Reads the lease object now (not the last poll): true while this attempt still holds it. Called
   * right before a checkpoint upload starts and before it is marked complete, so an attempt whose
   * worker was frozen (SIGSTOP, a paused VM) and wakes up after a takeover stores nothing. A failed
   * read throws (the caller counts it as a failed upload try).
   */
  async confirm(): Promise<boolean> {
    if (this.superseded) return false;
    if (await this.lease.superseded()) {
      this.superseded = true;
      this.log.warn({ key: this.lease.key }, 'a newer attempt holds the job’s lease in storage');
    }
    return !this.superseded;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
