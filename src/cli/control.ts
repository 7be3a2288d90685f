/**
 * Verbs that steer a running job: `kiln cancel|pause|resume`, and `kiln approve|reject` for a job
 * waiting in phase awaiting-approval. Each is sent as an Update, so the job itself answers: accepted
 * (exit 0, with the phase it moves to) or refused by its validator with the reason (exit 1, nothing
 * recorded). The rule of what can take effect when lives in one place: src/shared/control.ts.
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { controlJob } from '../client/jobs';
import { UsageError } from '../shared/errors';
import { progressQuery } from '../shared/messages';
import { KilnPhase } from '../shared/searchAttributes';
import { JobIdSchema } from '../shared/spec';
import type { JobSummary } from '../shared/summary';
import { connectClient, serverAddress } from '../temporal/connect';
import { bool, int, jobIdArg, parseArgs, str } from './args';
import { defaultBy, guarded, Refused } from './refused';
import { withClient, type CliContext, type Verb } from './verb';

type SignalName = 'cancel' | 'pause' | 'resume';
type JobState = { status: string; phase: string | null };

/** After the signal: the state that shows it took effect. */
async function waitForEffect(client: Client, jobId: string, what: SignalName, timeoutMs: number): Promise<JobState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await client.workflow.getHandle(jobId).describe();
    const phase = d.typedSearchAttributes.get(KilnPhase) ?? null;
    const st = { status: d.status.name, phase };
    if (what === 'cancel' && st.status !== 'RUNNING') return st;
    if (what === 'pause' && (phase === 'paused' || st.status !== 'RUNNING')) return st;
    // Resumed means training again: a new attempt is queued until its trainer reports (it may wait for a slot).
    if (what === 'resume' && ((phase !== 'paused' && phase !== 'queued') || st.status !== 'RUNNING')) return st;
    if (Date.now() > deadline) throw new Error(`kiln ${what}: sent, but ${jobId} still shows ${st.status.toLowerCase()} / ${phase} after ${timeoutMs} ms (kiln status ${jobId})`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

function signalVerb(what: SignalName): (ctx: CliContext) => Promise<number> {
  return async (ctx) => {
    const spec = { json: { type: 'bool' as const }, wait: { type: 'bool' as const }, timeout: { type: 'string' as const }, reason: { type: 'string' as const } };
    const p = parseArgs(ctx.argv, spec, what);
    const id = jobIdArg(p, what);
    return withClient(ctx.config(), async (client) => {
      // A cancel names its source, so the job's end reason reads `cancelled: wrong lr (by kiln cancel, ann)`.
      const answer = await controlJob(client, id, what, { reason: str(p, 'reason'), by: what === 'cancel' ? `kiln cancel, ${defaultBy()}` : defaultBy() });
      if (!answer.accepted) {
        process.stderr.write(`kiln ${what}: ${id}: ${answer.refusal.message}\n`);
        if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: id, signal: what, sent: false, accepted: false, code: answer.refusal.code, reason: answer.refusal.message }));
        return 1;
      }
      let after: JobState | null = null;
      if (bool(p, 'wait')) after = await waitForEffect(client, id, what, int(p, 'timeout', what) ?? 120_000);
      const r = answer.result;
      if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: id, signal: what, sent: true, accepted: true, seq: r.seq, message: r.message, ...(after ? { status: after.status, phase: after.phase } : {}) }));
      else if (after) ctx.out(`${what}: ${id} is now ${after.phase ?? after.status.toLowerCase()}`);
      else ctx.out(`${what} accepted by ${id}: ${r.message}${what === 'cancel' ? ' (kiln watch shows the end)' : what === 'pause' ? ' (kiln status shows paused)' : ''}`);
      return 0;
    });
  };
}

async function jobPhase(client: Client, jobId: string): Promise<JobState> {
  const h = client.workflow.getHandle(jobId);
  const d = await h.describe();
  let phase = d.typedSearchAttributes.get(KilnPhase) ?? null;
  if (d.status.name === 'RUNNING') {
    // The query is exact; the search attribute may lag. Without a worker to answer, fall back to it.
    phase = await Promise.race([h.query(progressQuery).then((p) => p.phase), new Promise<string | null>((r) => setTimeout(() => r(phase), 5000).unref())]).catch(() => phase);
  }
  return { status: d.status.name, phase };
}

/** Refuses a job that has ended (it cannot answer an Update) with the phase it ended in. */
async function requireRunning(client: Client, ctx: CliContext, jobId: string, what: 'approve' | 'reject'): Promise<void> {
  let state: JobState;
  try {
    state = await jobPhase(client, jobId);
  } catch (err) {
    const config = ctx.config();
    if (err instanceof WorkflowNotFoundError) throw new Refused('UNKNOWN_JOB', `no job ${jobId} on ${serverAddress(config)} (namespace ${config.server.namespace}); see kiln list --phase awaiting-approval`);
    throw err;
  }
  if (state.status !== 'RUNNING') {
    const now = `has ended (${state.status.toLowerCase()}${state.phase ? `, phase ${state.phase}` : ''})`;
    throw new Refused('NOT_AWAITING_APPROVAL', `job ${jobId} ${now}, not awaiting approval; ${what} only applies in phase awaiting-approval (kiln status ${jobId})`);
  }
}

function approvalVerb(what: 'approve' | 'reject'): (ctx: CliContext) => Promise<number> {
  return async (ctx) => {
    const p = parseArgs(ctx.argv, { by: { type: 'string' }, note: { type: 'string' }, wait: { type: 'bool' }, json: { type: 'bool' } }, what);
    const jobId = p.positional[0];
    if (!jobId) throw new UsageError(`kiln ${what}: which job? e.g. kiln ${what} train-spirals-3k9x2a --note "checked the eval report" (kiln list --phase awaiting-approval)`);
    const idCheck = JobIdSchema.safeParse(jobId);
    if (!idCheck.success) throw new UsageError(`kiln ${what}: ${idCheck.error.issues[0]!.message} (got ${JSON.stringify(jobId)})`);
    const by = str(p, 'by') ?? defaultBy();
    const note = str(p, 'note') ?? '';
    const json = bool(p, 'json');
    const client = await connectClient(ctx.config());
    try {
      return await guarded(ctx, what, json, async () => {
        await requireRunning(client, ctx, jobId, what);
        const h = client.workflow.getHandle(jobId);
        const answer = await controlJob(client, jobId, what, { by, note });
        if (!answer.accepted) throw new Refused(answer.refusal.code, `job ${jobId}: ${answer.refusal.message} (kiln status ${jobId})`);
        let registry: JobSummary['registry'] | null = null;
        if (bool(p, 'wait')) registry = ((await h.result()) as JobSummary).registry;
        if (json) ctx.out(JSON.stringify({ ok: true, jobId, signal: what, by, note, ...(registry ? { registry } : {}) }));
        else {
          ctx.out(`${what} sent to ${jobId} (by ${by}${note ? `: ${note}` : ''})`);
          if (registry) ctx.out(`v${registry.version} ${registry.stage}: ${registry.decision}`);
        }
        return 0;
      });
    } finally {
      await client.connection.close();
    }
  };
}

export const signalVerbs: Record<SignalName, Verb> = {
  cancel: {
    summary: 'cancel a job (the trainer checkpoints and exits)',
    usage: `kiln cancel <job> [--reason TEXT] [--wait [--timeout MS]] [--json]

Sends the cancel Update; the job answers, then ends as cancelled once the trainer is gone. Exit 1,
with the job's reason, if it refuses (it already ended, or a cancel is already under way). --wait
returns when the job has closed.

Examples:
  kiln cancel train-spirals-3k9x2a --reason "wrong lr"
  kiln cancel train-spirals-3k9x2a --wait`,
    run: signalVerb('cancel'),
  },
  pause: {
    summary: 'pause a training job: checkpoint, free the GPU, wait for resume',
    usage: `kiln pause <job> [--reason TEXT] [--wait [--timeout MS]] [--json]

Sends the pause Update. Only a job in phase training that is not already paused can be paused; the
job refuses anything else with the reason (exit 1). --wait returns once it shows paused.

Examples:
  kiln pause train-spirals-3k9x2a --wait
  kiln resume train-spirals-3k9x2a`,
    run: signalVerb('pause'),
  },
  resume: {
    summary: 'resume a paused job from its pause checkpoint',
    usage: `kiln resume <job> [--reason TEXT] [--wait [--timeout MS]] [--json]

Sends the resume Update. Only a paused (or pausing) job can be resumed; the job refuses anything else
with the reason (exit 1). --wait returns once it trains again (queued until a slot takes it).

Example:
  kiln resume train-spirals-3k9x2a --wait`,
    run: signalVerb('resume'),
  },
};

export const approvalVerbs: Record<'approve' | 'reject', Verb> = {
  approve: {
    summary: 'approve the version a job is waiting on (phase awaiting-approval): promote it',
    usage: `kiln approve <job> [--by NAME] [--note TEXT] [--wait] [--json]

Sends the job's \`approve\` Update with {by, note}; the version is promoted and the decision
("approved by ana (ok): val_loss 0.081 < 0.09 (production v1)") recorded on it and in the job result.
Refused by the job, with nothing recorded, unless it is in phase awaiting-approval. --wait waits for the job to
end and prints the decision. --by defaults to $KILN_USER or your login name.

Same with the Temporal CLI (the Update answers; the signal of the same name does not):
  temporal workflow update execute --workflow-id <job> --name approve --input '{"by":"ana","note":"ok"}'
  temporal workflow signal --workflow-id <job> --name approve --input '{"by":"ana","note":"ok"}'

Examples:
  kiln list --phase awaiting-approval
  kiln approve train-spirals-3k9x2a --note "eval report looks right"
  kiln approve train-spirals-3k9x2a --by ana --wait --json`,
    run: approvalVerb('approve'),
  },
  reject: {
    summary: 'reject the version a job is waiting on: it stays a candidate',
    usage: `kiln reject <job> [--by NAME] [--note TEXT] [--wait] [--json]

Sends the job's \`reject\` Update with {by, note}; the version stays a candidate and the rejection is
recorded on it and in the job result. Refused by the job, with nothing recorded, unless it is in phase
awaiting-approval. --by defaults to $KILN_USER or your login name.

Same with the Temporal CLI (the Update answers; the signal of the same name does not):
  temporal workflow update execute --workflow-id <job> --name reject --input '{"by":"ana","note":"worse on class 3"}'
  temporal workflow signal --workflow-id <job> --name reject --input '{"by":"ana","note":"worse on class 3"}'

Examples:
  kiln reject train-spirals-3k9x2a --note "worse on the rare class"
  kiln reject train-spirals-3k9x2a --by ana --wait --json`,
    run: approvalVerb('reject'),
  },
};
