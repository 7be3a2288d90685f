/**
 * Signal and query definitions: the names are public API (the Temporal CLI uses them:
 * `temporal workflow signal --name cancel --input '{"reason":"wrong lr"}'`). Workflow-safe.
 */
import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { JobSummary, Phase, ProgressReport } from './job';

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

export interface JobProgress {
  jobId: string;
  model: string;
  phase: Phase;
  attempt: number;
  workerId: string | null;
  step: number;
  totalSteps: number | null;
  epoch: number | null;
  totalEpochs: number | null;
  metrics: Record<string, number>;
  validation: Record<string, number>;
  etaMs: number | null;
  stepsPerSec: number | null;
  lastCheckpoint: ProgressReport['lastCheckpoint'];
  checkpoints: number;
  checkpointBytes: number;
  gpuIds: string[];
  gpu: ProgressReport['gpu'];
  malformedEvents: number;
  lastProgressAt: string | null;
  pausedAt: string | null;
  cancelReason: string | null;
  line: string;
  summary: JobSummary | null;
}

export interface JobStatus {
  jobId: string;
  model: string;
  phase: Phase;
  step: number;
  totalSteps: number | null;
  loss: number | null;
  line: string;
}

export const progressQuery = defineQuery<JobProgress>('progress');
export const statusQuery = defineQuery<JobStatus>('status');
