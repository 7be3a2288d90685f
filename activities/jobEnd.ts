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
      // With the reason, so the run's history (WorkflowExecutionCancelRequested) shows it in the Web UI.
      try {
        await deps.client.workflowService.requestCancelWorkflowExecution({
          namespace: deps.config.server.namespace,
          workflowExecution: { workflowId: r.workflowId, runId: r.runId },
          identity: deps.workerId,
          reason: r.reason.slice(0, 1000),
        });
      } catch (err) {
        // A second request for the same run is refused by the server: the first one stands.
        if (!/already|cancel.*request/i.test(String((err as Error)?.message ?? err))) throw err;
      }
    },

    async recordJobEnd(e: { prepared: PreparedJob; outcome: string; reason: string }): Promise<void> {
      deps.log.info({ jobId: e.prepared.jobId, model: e.prepared.spec.model, outcome: e.outcome, reason: e.reason }, 'job ended');
    },
  };
}
