/**
 * Exit codes of the trainer contract (re-exported by protocol.ts). A module of its own, free of
 * imports, so the shim, which runs once per trainer start, does not load zod.
 */
export const ExitCode = {
  ok: 0,
  /** The trainer (or evaluation command) rejected its params or input: retrying cannot help. */
  invalidInput: 2,
  /** The shim was started with bad arguments. */
  shimUsage: 70,
  /** The shim stopped the trainer because its worker went silent (frozen, blocked) or away. */
  workerLost: 75,
  /** The trainer could not be started (no such command, not executable). */
  cannotStart: 127,
  /** 128 + n: the trainer died by signal n. */
  signalBase: 128,
} as const;

/** What the shim writes to trainer.log (after `kiln shim: `) when the trainer cannot start; the train activity looks for it. */
export const CANNOT_START = 'cannot start trainer';
