/**
 * The awaiting-approval step of a TrainingJob: wait for approve or reject until the policy's timeout,
 * then record the verdict (approved, rejected, timeout, or cancelled) on the registered version.
 * Not a workflow: workflows/index.ts does not export it.
 */
import { type ActivityInterfaceFor, CancellationScope, condition, isCancellation, setCurrentDetails } from '@temporalio/workflow';
import type { ControlActivities } from './activityOptions';
import type { JobState } from './jobState';

type Control = ActivityInterfaceFor<ControlActivities>;
type RegisterResult = Awaited<ReturnType<ControlActivities['registerVersion']>>;

export async function awaitApproval(job: JobState, control: Control, reg: RegisterResult, timeoutMs: number): Promise<void> {
  job.setPhase('awaiting-approval');
  setCurrentDetails(`awaiting approval of ${job.model} v${reg.version}: ${reg.decision} (signal approve or reject)`);
  let decided: boolean;
  try {
    decided = await condition(() => job.approval !== null, timeoutMs);
  } catch (err) {
    if (isCancellation(err)) await recordCancelled(job, control, reg);
    throw err;
  }
  const a = job.approval;
  const outcome = await control.resolveApproval({
    model: job.model,
    version: reg.version,
    verdict: !decided || !a ? 'timeout' : a.approved ? 'approved' : 'rejected',
    by: a?.by ?? null,
    note: a?.note ?? '',
    eligibility: reg.decision,
    timeoutMs,
  });
  job.recordVerdict(outcome);
}

/** A cancelled wait is a decision too: record it on the version before the job ends. */
async function recordCancelled(job: JobState, control: Control, reg: RegisterResult): Promise<void> {
  await CancellationScope.nonCancellable(async () => {
    const outcome = await control
      .resolveApproval({ model: job.model, version: reg.version, verdict: 'cancelled', by: null, note: job.cancelReason ?? '', eligibility: reg.decision })
      .catch(() => null);
    if (outcome) job.recordVerdict(outcome);
  });
}
