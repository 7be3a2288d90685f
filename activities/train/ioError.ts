/**
 * A worker-side error while handling one job's files (ENOSPC, EIO, EACCES, a bad path): it fails that
 * attempt only, retryably, naming the error and the path, and never reaches the worker's event loop.
 */
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType } from '../../src/shared/errors';

/** `file`: the path to name when the error has none (a failed write(2) on an open file). */
export function jobIoFailure(jobId: string, err: unknown, file?: string): ApplicationFailure {
  if (err instanceof ApplicationFailure) return err;
  const e = err as NodeJS.ErrnoException & { dest?: string };
  const p = e.path ?? file;
  const where = p ? ` ${p}${e.dest ? ` → ${e.dest}` : ''}` : '';
  return ApplicationFailure.retryable(`cannot write the files of ${jobId}: ${e.code ?? e.name ?? 'Error'}${where}: ${e.message ?? String(err)}`, ErrorType.JobIoError, {
    code: e.code ?? null,
    path: p ?? null,
  });
}
