/**
 * What the registry and approval verbs share: refusals the user can fix (a message, JSON with --json,
 * exit 1, nothing changed) and who a decision is recorded as by default.
 */
import * as os from 'node:os';
import { RegistryError } from '../registry/types';
import type { CliContext } from './verb';

/** A refusal the user can fix: printed (and, with --json, emitted as JSON), exit 1, nothing changed. */
export class Refused extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** `--by` when not given: $KILN_USER, else the login name. */
export function defaultBy(): string {
  try {
    return process.env.KILN_USER || os.userInfo().username;
  } catch {
    return process.env.USER || 'unknown';
  }
}

/** Runs a sub-command; refusals and registry errors become a message (JSON with --json) and exit 1. */
export async function guarded(ctx: CliContext, verb: string, json: boolean, fn: () => Promise<number>, mutating = true): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof Refused) && !(err instanceof RegistryError)) throw err;
    const hint =
      err instanceof RegistryError && err.code === 'INCOMPLETE'
        ? ' (a version missing a required metric is never promotable; retrain so the trainer or its evaluate command emits it)'
        : err instanceof RegistryError && (err.code === 'NO_PREVIOUS' || err.code === 'NO_PRODUCTION')
          ? ' (name the target with --to VERSION)'
          : '';
    const message = `kiln ${verb}: ${err.message}${hint}${mutating ? '; nothing changed' : ''}`;
    if (json) ctx.out(JSON.stringify({ ok: false, error: { code: err.code, message } }));
    process.stderr.write(`${message}\n`);
    return 1;
  }
}
