/**
 * Signal, update and query definitions: the names are public API (the Temporal CLI uses them:
 * `temporal workflow signal --name cancel --input '{"reason":"wrong lr"}'`, or the same as an Update,
 * which answers: `temporal workflow update execute --name cancel --input '{"reason":"wrong lr"}'`).
 * Every payload is untrusted and parsed by the workflow (src/shared/control.ts). Workflow-safe.
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { ApprovalInput, CancelInput, ControlResult, PauseInput } from './control';
import type { JobStatus, ProgressReport } from './progress';
import type { RetryState } from './retry';
import type { JobProgress } from './summary';

export const TASK_QUEUE_CONTROL = 'kiln-control';
export const gpuTaskQueue = (pool: string): string => `kiln-gpu-${pool}`;

export const cancelSignal = defineSignal<[CancelInput?]>('cancel');
export const pauseSignal = defineSignal<[PauseInput?]>('pause');
export const resumeSignal = defineSignal<[PauseInput?]>('resume');
export const approveSignal = defineSignal<[ApprovalInput?]>('approve');
export const rejectSignal = defineSignal<[ApprovalInput?]>('reject');

/** The same controls as Updates: a validator refuses what cannot take effect, before it is recorded. */
export const cancelUpdate = defineUpdate<ControlResult, [CancelInput?]>('cancel');
export const pauseUpdate = defineUpdate<ControlResult, [PauseInput?]>('pause');
export const resumeUpdate = defineUpdate<ControlResult, [PauseInput?]>('resume');
export const approveUpdate = defineUpdate<ControlResult, [ApprovalInput?]>('approve');
export const rejectUpdate = defineUpdate<ControlResult, [ApprovalInput?]>('reject');
/** Internal: the train activity reports progress to its workflow. */
export const reportSignal = defineSignal<[ProgressReport]>('kiln.report');

export const progressQuery = defineQuery<JobProgress>('progress');
export const statusQuery = defineQuery<JobStatus>('status');
/** What `kiln retry` starts a new run from; answered by closed runs too (workflows/retry.ts). */
export const retryStateQuery = defineQuery<RetryState>('kiln.retryState');
