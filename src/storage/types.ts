/**
 * The object store every host shares: checkpoints, models, logs and the work-dir lease live here.
 * Keys are relative, `/`-separated (`jobs/<id>/checkpoints/step-600/model.pt`); a store adds its own
 * root or prefix. ETags are opaque quoted strings, compared only for equality.
 */
import { StorageError } from './errors';

/** Data to put: bytes in memory, or a local file streamed from disk. */
export type Body = Buffer | { file: string };

export interface PutOptions {
  /** `'*'`: create only; PreconditionFailed when the key exists. */
  ifNoneMatch?: '*';
  /** Replace only while the object's ETag is this one; PreconditionFailed otherwise (or when it is gone). */
  ifMatch?: string;
  /** Bytes of this object sent so far, and its size. */
  onProgress?: (done: number, total: number) => void;
  /** The body's sha256 (hex) when the caller already knows it; stored with the object. */
  sha256?: string;
}

export interface ObjectInfo {
  key: string;
  size: number;
  etag: string;
  /** Hex sha256 of the content where the store keeps one (local: always; s3: when Kiln put it). */
  sha256?: string;
}

export interface ListedObject {
  key: string;
  size: number;
}

export interface ProbeResult {
  uri: string;
  /** A second create-only put was refused and a stale If-Match too: the lease can fence. */
  conditionalWrites: true;
  ms: number;
}

export interface ObjectStore {
  /** `s3://bucket/prefix` or `file:///path`, for messages and recorded URIs. */
  readonly uri: string;
  /** Puts the object and returns its new ETag. */
  put(key: string, body: Body, opts?: PutOptions): Promise<string>;
  /** Throws ObjectNotFound when absent. */
  get(key: string): Promise<{ body: Buffer; etag: string }>;
  /** Streams the object to a temp file next to `localPath`, then renames it there. */
  download(key: string, localPath: string, opts?: { onProgress?: (done: number, total: number) => void }): Promise<ObjectInfo>;
  /** undefined when absent. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with `prefix` (a string prefix, as in S3), sorted by key. */
  list(prefix: string): Promise<ListedObject[]>;
  /** Deleting a missing object is not an error. */
  delete(key: string): Promise<void>;
  /** Deletes every object under `prefix`; returns how many. */
  deletePrefix(prefix: string): Promise<number>;
  /** Write, read, conditional writes and delete of a probe object, for doctor and worker start. */
  probe(): Promise<ProbeResult>;
  /** Frees connections. */
  close(): void;
}

/** Keys are relative paths without empty, `.` or `..` segments. */
export function checkKey(store: string, key: string): string {
  const segs = key.split('/');
  if (!key || key.includes('\\') || key.includes('\0') || segs.some((s) => s === '' || s === '.' || s === '..')) {
    throw new StorageError(`${store}: invalid object key ${JSON.stringify(key)} (a relative a/b/c path without empty, "." or ".." parts)`, store);
  }
  return key;
}

/** `a/b` + `c` → `a/b/c`; either may be empty. */
export function joinKey(...parts: string[]): string {
  return parts.filter(Boolean).join('/');
}
