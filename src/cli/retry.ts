/**
 * `kiln retry <job> [--from-checkpoint STEP] [--reason TEXT]`: continue a failed, cancelled,
 * terminated or timed-out job from its checkpoints, under the same job id (src/client/retry.ts).
 * Exit 0 started (with --wait: completed), 1 refused (nothing started) or, with --wait, ended otherwise.
 */
import { retryJob, RetryRefused } from '../client/retry';
import { UsageError } from '../shared/errors';
import { bool, jobIdArg, parseArgs, str } from './args';
import { defaultBy } from './refused';
import { withClient, type CliContext, type Verb } from './verb';
import { watchJob } from './watch';

function stepArg(v: string | undefined): number | null {
  if (v === undefined) return null;
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`kiln retry: --from-checkpoint needs a step number >= 0, got ${JSON.stringify(v)} (kiln status <job> lists the checkpoints)`);
  return Number(v);
}

async function retry(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { 'from-checkpoint': { type: 'string' }, reason: { type: 'string' }, by: { type: 'string' }, wait: { type: 'bool' }, json: { type: 'bool' } }, 'retry');
  const id = jobIdArg(p, 'retry');
  const fromStep = stepArg(str(p, 'from-checkpoint'));
  const json = bool(p, 'json');
  return withClient(ctx.config(), async (client) => {
    let r;
    try {
      r = await retryJob(client, id, { by: str(p, 'by') ?? `kiln retry, ${defaultBy()}`, reason: str(p, 'reason'), fromStep });
    } catch (err) {
      if (!(err instanceof RetryRefused)) throw err;
      const message = `kiln retry: ${err.message}; nothing started`;
      if (json) ctx.out(JSON.stringify({ ok: false, error: { code: err.code, message } }));
      process.stderr.write(`${message}\n`);
      return 1;
    }
    const from = r.fromStep ? `from checkpoint step ${r.fromStep}` : 'from step 0 (from scratch)';
    if (json) ctx.out(JSON.stringify({ ok: true, jobId: r.jobId, runId: r.runId, previousRunId: r.previousRunId, previousOutcome: r.previousOutcome, fromStep: r.fromStep, checkpoints: r.steps }));
    else ctx.out(`retry started: ${r.jobId} (run ${r.runId}) after the run ${r.previousRunId} ${r.previousOutcome}, ${from}`);
    if (bool(p, 'wait')) return watchJob(client, r.jobId, ctx.out, { json });
    return 0;
  });
}

export const retryVerb: Verb = {
  summary: 'continue a failed or cancelled job from its checkpoints (same job id)',
  usage: `kiln retry <job> [--from-checkpoint STEP] [--reason TEXT] [--by NAME] [--wait] [--json]

Starts a new run of a training job whose latest run failed, was cancelled, terminated or timed out,
under the same job id. It reads the ended run's state from Temporal (a control worker answers), not
from any disk, so it works when the GPU host is gone. The attempt log, checkpoints, suspect and
quarantined checkpoints and pins carry over; the attempt budgets (maxAttempts, maxInterruptions,
backoff) start over. kiln status and the summary show who retried it, why, and from which step.

Without --from-checkpoint it resumes from the newest verified checkpoint that is not quarantined
(nor the one the last attempt failed on right after resuming); a job with none is refused unless
you say --from-checkpoint 0 (train again from step 0). --from-checkpoint STEP must be one of the
job's verified, non-quarantined checkpoints (exit 1 lists them); newer checkpoints are stepped over.
Refused (exit 1, nothing started) for a running job (kiln resume / kiln cancel), a completed one, or
one that failed before training began. --wait follows the job like kiln watch.

Examples:
  kiln retry train-spirals-3k9x2a --reason "fixed the data loader"
  kiln retry train-spirals-3k9x2a --from-checkpoint 40 --wait`,
  run: retry,
};
