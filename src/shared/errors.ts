/**
 * Failure types Kiln uses as `ApplicationFailure.type`, in one place. Workflow-safe.
 * Non-retryable ones are listed in every activity's retry policy.
 */
export const ErrorType = {
  /** The job spec or its params are invalid: fix the spec, retrying cannot help. */
  InvalidJobSpec: 'InvalidJobSpec',
  /** The trainer exited 2: it rejected its params. */
  InvalidParams: 'InvalidParams',
  /** The trainer exited non-zero or died by a signal: retryable. */
  TrainerFailed: 'TrainerFailed',
  /** The trainer lived but its step did not advance for the stall timeout: retryable. */
  TrainerStalled: 'TrainerStalled',
  /** Config on the worker cannot run this job (unknown trainer, bad command): not retryable here. */
  WorkerConfig: 'WorkerConfig',
  /** The trainer's executable or script is missing or not executable on the worker (spawn ENOENT/EACCES): not retryable. */
  TrainerNotFound: 'TrainerNotFound',
  /** The worker loaded a different temporal.yaml than the one the job was validated with (docs/operations.md, "Config drift"): not retryable. */
  WorkerConfigMismatch: 'WorkerConfigMismatch',
  /** A newer attempt of the same job owns the work dir: this one stopped itself. */
  AttemptSuperseded: 'AttemptSuperseded',
  /** The worker could not write a job's files (ENOSPC, EIO, EACCES, a bad path): that attempt fails, retryably, as a trainer failure. */
  JobIoError: 'JobIoError',
  /** The worker running an attempt died (found by a restarted worker on its host): an interruption. */
  WorkerLost: 'WorkerLost',
  /** The worker running an attempt was drained (SIGTERM): an interruption. */
  WorkerShutdown: 'WorkerShutdown',
  /** Object storage was briefly unreachable: an interruption. */
  StorageUnavailable: 'StorageUnavailable',
  /** Every checkpoint the job recorded is unreachable (local storage on a dead host, objects deleted) and onLostCheckpoints is not `restart`. */
  CheckpointsUnreachable: 'CheckpointsUnreachable',
  /** More interruptions than timeouts.maxInterruptions allows. */
  TooManyInterruptions: 'TooManyInterruptions',
  /** Trainer failures came faster than the thrashing window allows, progress or not. */
  TrainerThrashing: 'TrainerThrashing',
  /** The job ended in a failure after all retries. */
  TrainingFailed: 'TrainingFailed',
  /** A dataset's version could not be found right now (its resolver failed or timed out): retryable. */
  DatasetUnavailable: 'DatasetUnavailable',
  /** Registry refused an operation (unknown version, incomplete version). */
  RegistryRefused: 'RegistryRefused',
} as const;

export const NON_RETRYABLE_TYPES = [
  ErrorType.InvalidJobSpec,
  ErrorType.InvalidParams,
  ErrorType.WorkerConfig,
  ErrorType.RegistryRefused,
  ErrorType.CheckpointsUnreachable,
  ErrorType.TrainerNotFound,
  ErrorType.WorkerConfigMismatch,
];

/** Thrown when temporal.yaml (or a job spec) is invalid; `problems` lists every issue by path. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(`${source} is invalid:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/** Thrown when a CLI argument is wrong; the message says what to type instead. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
