/**
 * Client-side job operations shared by the CLI, `kiln dev --demo`, tests and benchmarks.
 * Everything reads the truth from Temporal: there is no job table.
 */
import * as crypto from 'node:crypto';
import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { validateSpec } from '../config/spec';
import type { KilnConfig } from '../config/load';
import { cancelSignal, pauseSignal, progressQuery, resumeSignal, TASK_QUEUE_CONTROL } from '../shared/messages';
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
    args: [spec],
    typedSearchAttributes: kilnSearchAttributes({ model: spec.model, phase: 'queued', trigger: spec.trigger }),
    staticSummary: staticSummary(spec),
    staticDetails: `Kiln training job for model **${spec.model}** (trainer \`${spec.trainer}\`, dataset \`${spec.dataset}\`).`,
  });
}

export { WorkflowExecutionAlreadyStartedError };

export async function signalJob(client: Client, jobId: string, what: 'cancel' | 'pause' | 'resume', reason?: string): Promise<void> {
  const h = client.workflow.getHandle(jobId);
  if (what === 'cancel') await h.signal(cancelSignal, reason ? { reason } : {});
  else if (what === 'pause') await h.signal(pauseSignal);
  else await h.signal(resumeSignal);
}

export async function queryProgress(client: Client, jobId: string): Promise<JobProgress> {
  return client.workflow.getHandle(jobId).query(progressQuery);
}
