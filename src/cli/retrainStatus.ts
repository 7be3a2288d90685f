/**
 * `kiln status` for a RetrainModel run (`retrain-<model>-<fire time>`, or the id `kiln train` printed):
 * its KilnPhase, the decision and the training job it started, from describe and the `retrainState`
 * query (or the result / failure once it ended).
 */
import type { Client } from '@temporalio/client';
import { WorkflowNotFoundError } from '@temporalio/client';
import { retrainStateQuery, type RetrainResult, type RetrainState } from '../shared/retrain';
import { readKilnSearchAttributes } from '../shared/searchAttributes';

/** Retrain run ids: `retrain-<model>…`, which may carry the schedule's fire time (with `:`). */
const RETRAIN_ID_RE = /^retrain-[A-Za-z0-9][A-Za-z0-9._:+-]{0,250}$/;

export function isRetrainId(id: string | undefined): boolean {
  return id !== undefined && RETRAIN_ID_RE.test(id) && !id.includes('..');
}

export interface RetrainStatusView {
  workflowId: string;
  runId: string;
  workflowType: 'RetrainModel';
  workflowStatus: string;
  model: string | null;
  phase: string | null;
  trigger: string | null;
  state: RetrainState | null;
  result: Omit<RetrainResult, 'training'> | null;
  failure: string | null;
  startTime: string;
  closeTime: string | null;
}

/** The run's view and text, or null when `id` is not a RetrainModel run (then it is a job id). */
export async function retrainStatus(client: Client, id: string, o: { queryTimeoutMs: number }): Promise<{ view: RetrainStatusView; text: string } | null> {
  const h = client.workflow.getHandle(id);
  let d;
  try {
    d = await h.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError && isRetrainId(id)) throw new Error(`kiln status: no retrain run ${id} (kiln list --retrains shows them)`);
    throw err;
  }
  if (d.type !== 'RetrainModel') return null;
  const sa = readKilnSearchAttributes(d.typedSearchAttributes);
  let state: RetrainState | null = null;
  let result: RetrainStatusView['result'] = null;
  let failure: string | null = null;
  if (d.status.name === 'RUNNING') {
    state = await client.withDeadline(Date.now() + o.queryTimeoutMs, () => h.query(retrainStateQuery)).catch(() => null);
  } else if (d.status.name === 'COMPLETED') {
    const r = (await h.result()) as RetrainResult;
    const { training: _training, ...rest } = r;
    result = rest;
  } else {
    failure = await h.result().then(() => null, (err: unknown) => {
      const e = err as Error & { cause?: Error };
      return e.cause?.message ?? e.message ?? String(err);
    });
  }
  const view: RetrainStatusView = {
    workflowId: id,
    runId: d.runId,
    workflowType: 'RetrainModel',
    workflowStatus: d.status.name,
    model: sa.model,
    phase: sa.phase,
    trigger: sa.trigger,
    state,
    result,
    failure,
    startTime: d.startTime.toISOString(),
    closeTime: d.closeTime?.toISOString() ?? null,
  };
  const lines = [`${id}  ${sa.phase ?? '?'}  (RetrainModel for model ${sa.model ?? '?'}, ${sa.trigger ?? '?'}, workflow ${d.status.name})`];
  const reason = result?.reason ?? state?.reason;
  if (reason) lines.push(`  decision:   ${result?.outcome ?? state?.outcome ?? state?.phase ?? '?'}: ${reason}`);
  const child = result?.childId ?? state?.childId;
  if (child) lines.push(`  training:   ${child}  (kiln status ${child})`);
  const fp = result?.fingerprint ?? state?.fingerprint;
  if (fp) lines.push(`  data:       ${fp}`);
  if (failure) lines.push(`  failure:    ${failure.trimEnd().split('\n').join('\n              ')}`);
  return { view, text: lines.join('\n') };
}
