/**
 * Errors of the object store. Messages name the store (`s3://bucket/prefix`, `file:///path`), the
 * operation and the fix; they never include credentials.
 */

/** Thrown when a storage operation fails for a reason not covered by a subclass. */
export class StorageError extends Error {
  override readonly name: string = 'StorageError';
  constructor(
    message: string,
    /** `s3://bucket/prefix` or `file:///path`: where the store is. */
    readonly store: string,
  ) {
    super(message);
  }
}

/** Thrown when a conditional put loses: `ifNoneMatch: '*'` found the object, or `ifMatch` a different ETag (or none). */
export class PreconditionFailed extends StorageError {
  override readonly name = 'PreconditionFailed';
  constructor(
    store: string,
    readonly key: string,
    readonly condition: 'if-none-match' | 'if-match',
  ) {
    super(`${store}/${key}: ${condition === 'if-none-match' ? 'the object already exists' : 'the object changed or is gone'} (conditional write refused)`, store);
  }
}

/** Thrown when get or download asks for an object that does not exist. */
export class ObjectNotFound extends StorageError {
  override readonly name = 'ObjectNotFound';
  constructor(
    store: string,
    readonly key: string,
  ) {
    super(`${store}/${key}: no such object`, store);
  }
}

/** Why a store cannot be used at all: nothing answers, the credentials or permissions are refused, the bucket is missing, conditional writes are ignored. */
export type UnavailableReason = 'unreachable' | 'credentials' | 'denied' | 'bucket' | 'conditional';

/** Thrown when the store cannot be used at all; the message says how to fix it. */
export class StorageUnavailable extends StorageError {
  override readonly name = 'StorageUnavailable';
  constructor(
    message: string,
    store: string,
    readonly reason: UnavailableReason,
  ) {
    super(message, store);
  }
}

/** Thrown when a checkpoint is asked for (download) that is not verified: incomplete, missing or altered. */
export class CheckpointNotVerified extends StorageError {
  override readonly name = 'CheckpointNotVerified';
  constructor(
    store: string,
    readonly prefix: string,
    readonly problem: string,
  ) {
    super(`checkpoint ${store}/${prefix} is not verified: ${problem}`, store);
  }
}
