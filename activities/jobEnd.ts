/**
 * The end of a job (control queue): the cancel signal's cancellation request, and the job's last
 * log line.
 */
import type { PreparedJob } from '../src/shared/spec';
import type { CommonDeps } from './deps';

export function createJobEndActivities(deps: CommonDeps) {
  return {
    /** Cancels a workflow as a client would (`temporal workflow cancel`); used by the cancel signal. */
    async requestCancellation(r: { workflowId: string; runId: string; reason: string }): Promise<void> {
      deps.log.info({ jobId: r.workflowId, reason: r.reason }, 'cancel signal: requesting cancellation');
      await deps.client.workflow.getHandle(r.workflowId, r.runId).cancel();
    },

    async recordJobEnd(e: { prepared: PreparedJob; outcome: string; reason: string }): Promise<void> {
      deps.log.info({ jobId: e.prepared.jobId, model: e.prepared.spec.model, outcome: e.outcome, reason: e.reason }, 'job ended');
    },
  };
}
