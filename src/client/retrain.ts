/**
 * Starting RetrainModel by hand (`kiln train`, tests, benchmarks): the same workflow a schedule fire
 * starts, so the same need-checks and the same dedupe on the child job id apply.
 */
import { randomBytes } from 'node:crypto';
import type { Client, WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import { formatDuration } from '../shared/duration';
import { ConfigError } from '../shared/errors';
import { TASK_QUEUE_CONTROL } from '../shared/messages';
import { unknownName } from '../shared/names';
import { retrainStateQuery, type RetrainInput, type RetrainResult, type RetrainState } from '../shared/retrain';
import { kilnSearchAttributes } from '../shared/searchAttributes';
import type { RetrainModel } from '../../workflows/retrainModel';

export interface StartRetrainOptions {
  force?: boolean;
  taskQueue?: string;
  trigger?: RetrainInput['trigger'];
  workflowId?: string;
}

export function manualRetrainId(model: string): string {
  return `retrain-${model}-manual-${randomBytes(4).readUInt32BE().toString(36).padStart(6, '0').slice(-6)}`;
}

/**
 * `kiln train <model>`: starts RetrainModel, the same path a schedule takes, so the same dedupe on the
 * child id applies. `force` skips the need-checks only.
 */
export async function startRetrain(client: Client, config: KilnConfig, model: string, o: StartRetrainOptions = {}): Promise<WorkflowHandleWithFirstExecutionRunId<typeof RetrainModel>> {
  if (!config.models[model]) {
    throw new ConfigError('kiln train', [`model: ${unknownName('model', model, Object.keys(config.models), config.file)}`]);
  }
  const trigger = o.trigger ?? 'manual';
  const input: RetrainInput = { model, trigger, ...(o.force ? { force: true } : {}) };
  return client.workflow.start<typeof RetrainModel>('RetrainModel', {
    taskQueue: o.taskQueue ?? TASK_QUEUE_CONTROL,
    workflowId: o.workflowId ?? manualRetrainId(model),
    args: [input],
    typedSearchAttributes: kilnSearchAttributes({ model, trigger }),
    staticSummary: `retrain ${model} (${trigger}${o.force ? ', forced' : ''})`,
  });
}

/** Polls the run's state until the need-check decided (or the run closed). */
export async function awaitRetrainDecision(client: Client, workflowId: string, timeoutMs = 30_000): Promise<RetrainState | RetrainResult> {
  const h = client.workflow.getHandle<typeof RetrainModel>(workflowId);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await h.describe();
    if (d.status.name !== 'RUNNING') {
      if (d.status.name === 'COMPLETED') return h.result();
      throw new Error(`RetrainModel ${workflowId} ended ${d.status.name} before deciding (see temporal workflow show --workflow-id ${workflowId})`);
    }
    try {
      const s = await h.query(retrainStateQuery);
      if (s.phase !== 'checking') return s;
    } catch {
      /* no worker answered yet */
    }
    if (Date.now() > deadline) throw new Error(`RetrainModel ${workflowId} did not decide within ${formatDuration(timeoutMs)} (is a control worker running on its task queue?)`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
