/**
 * Retry a TrainingJob whose latest run ended failed, cancelled, terminated or timed out (issue 16,
 * item 2): everything comes from Temporal, nothing from local files (the GPU host may be gone). The
 * ended run answers the `kiln.retryState` query (a control worker replays it), and a new run starts
 * under the same workflow id (reuse allowed only after such an end) with the state continue-as-new
 * carries plus the retry request; workflows/retry.ts applies it. The workflow side is
 * in workflows/retry.ts.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy, WorkflowNotFoundError, type Client } from '@temporalio/client';
import { retryStateQuery, TASK_QUEUE_CONTROL } from '../shared/messages';
import { chooseRetryStep, MAX_RETRY_TEXT, usableCheckpoints, type RetryRequest, type RetryState } from '../shared/retry';
import { kilnSearchAttributes } from '../shared/searchAttributes';
import { staticSummary, type JobSpec } from '../shared/spec';
import type { JobSummary } from '../shared/summary';

/** Why a retry cannot go ahead, with what to do instead; nothing was started. */
export class RetryRefused extends Error {
  constructor(
    readonly code: 'UNKNOWN_JOB' | 'RUNNING' | 'COMPLETED' | 'NOT_A_JOB' | 'NO_STATE' | 'BAD_STEP' | 'RACE',
    message: string,
  ) {
    super(message);
  }
}

export interface RetryOptions {
  by: string;
  reason?: string;
  fromStep?: number | null;
  /** Where the ended run's query is answered; the control queue by default. */
  taskQueue?: string;
}

export interface RetryStarted {
  jobId: string;
  runId: string;
  previousRunId: string;
  previousOutcome: string;
  fromStep: number;
  steps: number[];
}

const ENDED: Record<string, string> = { FAILED: 'failed', CANCELLED: 'cancelled', TERMINATED: 'terminated', TIMED_OUT: 'timed out' };

async function endedRun(client: Client, jobId: string): Promise<{ runId: string; outcome: string; taskQueue: string }> {
  let d;
  try {
    d = await client.workflow.getHandle(jobId).describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new RetryRefused('UNKNOWN_JOB', `no job ${jobId} in namespace ${client.options.namespace} (\`kiln list\` shows the jobs)`);
    throw err;
  }
  if (d.type !== 'TrainingJob') throw new RetryRefused('NOT_A_JOB', `${jobId} is a ${d.type} run, not a training job; kiln retry retries training jobs`);
  const status = d.status.name;
  if (status === 'RUNNING') throw new RetryRefused('RUNNING', `job ${jobId} is still running; use kiln resume (if paused) or kiln cancel, and kiln status ${jobId} to see where it is`);
  if (status === 'COMPLETED') {
    const v = (d.memo as { summary?: JobSummary } | undefined)?.summary?.registry.version;
    throw new RetryRefused('COMPLETED', `job ${jobId} completed${v ? ` and registered version ${v}` : ''}; there is nothing to retry (kiln submit starts a new job)`);
  }
  const outcome = ENDED[status];
  if (!outcome) throw new RetryRefused('NOT_A_JOB', `job ${jobId}'s latest run ended ${status.toLowerCase()}; only a failed, cancelled, terminated or timed-out job can be retried`);
  return { runId: d.runId, outcome, taskQueue: d.taskQueue };
}

/** The ended run's state, from its query (answered by a control worker replaying it). */
async function readState(client: Client, jobId: string, runId: string): Promise<RetryState> {
  try {
    return await client.workflow.getHandle(jobId, runId).query(retryStateQuery);
  } catch (err) {
    throw new RetryRefused('NO_STATE', `cannot read the state of ${jobId}'s ended run ${runId}: ${(err as Error).message.split('\n')[0]} (a control worker must run to answer: kiln dev, or kiln worker --control)`);
  }
}

/** The step the retry resumes from and the steps it could; refuses a bad step with the list. */
export async function planRetry(client: Client, jobId: string, fromStep: number | null): Promise<{ state: RetryState; run: Awaited<ReturnType<typeof endedRun>>; step: number; steps: number[] }> {
  const run = await endedRun(client, jobId);
  const state = await readState(client, jobId, run.runId);
  if (state.registeredVersion !== null) throw new RetryRefused('COMPLETED', `job ${jobId} already registered version ${state.registeredVersion} before it ${run.outcome}; training is done (kiln models show, or kiln submit a new job)`);
  if (!state.carried) throw new RetryRefused('NO_STATE', `job ${jobId} ${run.outcome} before its training began (in prepare); nothing to resume, kiln submit it again`);
  const steps = usableCheckpoints(state.checkpoints).map((c) => c.step);
  const chosen = chooseRetryStep(state.checkpoints, fromStep);
  if (!chosen.ok) throw new RetryRefused('BAD_STEP', `job ${jobId}: ${chosen.error}`);
  return { state, run, step: chosen.step, steps };
}

export async function retryJob(client: Client, jobId: string, o: RetryOptions): Promise<RetryStarted> {
  const plan = await planRetry(client, jobId, o.fromStep ?? null);
  const spec = plan.state.spec as JobSpec;
  const retry: RetryRequest = {
    by: o.by.slice(0, MAX_RETRY_TEXT),
    reason: (o.reason ?? '').slice(0, MAX_RETRY_TEXT),
    fromStep: o.fromStep ?? null,
    previousRunId: plan.run.runId,
    previousOutcome: plan.run.outcome,
    at: new Date().toISOString(),
  };
  try {
    const h = await client.workflow.start('TrainingJob', {
      taskQueue: o.taskQueue ?? plan.run.taskQueue ?? TASK_QUEUE_CONTROL,
      workflowId: jobId,
      // Reuse of the id only after a run that did not complete: a completed job is never run again.
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
      args: [spec, { ...(plan.state.carried as object), retry }],
      typedSearchAttributes: kilnSearchAttributes({ model: spec.model, phase: 'queued', trigger: spec.trigger }),
      staticSummary: `${staticSummary(spec)} (retried by ${retry.by})`,
      staticDetails: `Kiln training job for model **${spec.model}**, retried by ${retry.by}${retry.reason ? ` (${retry.reason})` : ''} after run ${plan.run.runId} ${plan.run.outcome}.`,
    });
    return { jobId, runId: h.firstExecutionRunId, previousRunId: plan.run.runId, previousOutcome: plan.run.outcome, fromStep: plan.step, steps: plan.steps };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) throw new RetryRefused('RACE', `job ${jobId} was started again meanwhile (another retry?); kiln status ${jobId}`);
    throw err;
  }
}
