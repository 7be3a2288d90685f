/**
 * Client-side job operations shared by the CLI, `kiln dev --demo`, tests and benchmarks.
 * Everything reads the truth from Temporal: there is no job table.
 */
import * as crypto from 'node:crypto';
import { WorkflowExecutionAlreadyStartedError, WorkflowUpdateFailedError, type Client, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { validateSpec } from '../config/spec';
import type { KilnConfig } from '../config/load';
import { ApplicationFailure } from '@temporalio/common';
import { approveUpdate, cancelUpdate, pauseUpdate, progressQuery, rejectUpdate, resumeUpdate, TASK_QUEUE_CONTROL } from '../shared/messages';
import { CONTROL_REFUSED, type ApprovalInput, type CancelInput, type ControlAction, type ControlResult, type PauseInput, type Refusal } from '../shared/control';
import type { JobProgress } from '../shared/summary';
import { staticSummary, type JobSpec } from '../shared/spec';
import { kilnSearchAttributes } from '../shared/searchAttributes';
import type { TrainingJob } from '../../workflows/trainingJob';

export function newJobId(model: string): string {
  return `train-${model}-${crypto.randomBytes(4).readUInt32BE().toString(36).padStart(6, '0').slice(-6)}`;
}

export interface SubmitOptions {
  jobId?: string;
  taskQueue?: string;
}

export async function submitJob(client: Client, config: KilnConfig, spec: JobSpec, o: SubmitOptions = {}): Promise<WorkflowHandleWithFirstExecutionRunId<typeof TrainingJob>> {
  const jobId = o.jobId ?? newJobId(spec.model);
  validateSpec(config, spec, jobId);
  return client.workflow.start<typeof TrainingJob>('TrainingJob', {
    taskQueue: o.taskQueue ?? TASK_QUEUE_CONTROL,
    workflowId: jobId,
    // The hash of the config this spec was validated with: a worker running another one refuses it.
    args: [{ ...spec, configHash: spec.configHash ?? config.jobHashes[spec.model] }],
    typedSearchAttributes: kilnSearchAttributes({ model: spec.model, phase: 'queued', trigger: spec.trigger }),
    staticSummary: staticSummary(spec),
    staticDetails: `Kiln training job for model **${spec.model}** (trainer \`${spec.trainer}\`, dataset \`${spec.dataset}\`).`,
  });
}

export { WorkflowExecutionAlreadyStartedError };

const UPDATES = { cancel: cancelUpdate, pause: pauseUpdate, resume: resumeUpdate, approve: approveUpdate, reject: rejectUpdate } as const;

export type ControlAnswer = { accepted: true; result: ControlResult } | { accepted: false; refusal: Refusal };

/**
 * Sends a control action as an Update, so the job itself answers: accepted (with the phase it moves
 * to), or refused by its validator (nothing recorded), with the reason. A job that already closed
 * cannot answer; that is a refusal too.
 */
export async function controlJob(client: Client, jobId: string, action: ControlAction, input: CancelInput | PauseInput | ApprovalInput = {}): Promise<ControlAnswer> {
  const h = client.workflow.getHandle(jobId);
  try {
    return { accepted: true, result: await h.executeUpdate<ControlResult, [typeof input]>(UPDATES[action].name, { args: [input] }) };
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError && err.cause instanceof ApplicationFailure && err.cause.type === CONTROL_REFUSED) {
      const r = err.cause.details?.[0] as Refusal | undefined;
      return { accepted: false, refusal: r ?? { code: 'INVALID_INPUT', message: err.cause.message } };
    }
    const d = await h.describe().catch(() => null);
    if (d && d.status.name !== 'RUNNING') return { accepted: false, refusal: { code: 'JOB_ENDED', message: `the job already ended (${d.status.name.toLowerCase()})` } };
    throw err;
  }
}

export async function queryProgress(client: Client, jobId: string): Promise<JobProgress> {
  return client.workflow.getHandle(jobId).query(progressQuery);
}
