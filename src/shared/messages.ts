/**
 * Signal and query definitions: the names are public API (the Temporal CLI uses them:
 * `temporal workflow signal --name cancel --input '{"reason":"wrong lr"}'`). Workflow-safe.
 */
import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { JobStatus, ProgressReport } from './progress';
import type { JobProgress } from './summary';

export const TASK_QUEUE_CONTROL = 'kiln-control';
export const gpuTaskQueue = (pool: string): string => `kiln-gpu-${pool}`;

export interface CancelInput {
  reason?: string;
}
export interface ApprovalInput {
  by?: string;
  note?: string;
}

export const cancelSignal = defineSignal<[CancelInput?]>('cancel');
export const pauseSignal = defineSignal<[]>('pause');
export const resumeSignal = defineSignal<[]>('resume');
export const approveSignal = defineSignal<[ApprovalInput?]>('approve');
export const rejectSignal = defineSignal<[ApprovalInput?]>('reject');
/** Internal: the train activity reports progress to its workflow. */
export const reportSignal = defineSignal<[ProgressReport]>('kiln.report');

export const progressQuery = defineQuery<JobProgress>('progress');
export const statusQuery = defineQuery<JobStatus>('status');
