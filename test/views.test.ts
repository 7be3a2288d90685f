/**
 * Readable raw views (issue 14, item 7) and kiln watch's attempt lines (item 3), as pure functions:
 * the summary the memo and the result carry (numbers to 4 significant digits, paths relative to the
 * job's folder), summaries written before that (absolute paths, no root) still read by `kiln status`,
 * and the attempt events `kiln watch` prints. The end-to-end checks are in training.test.ts,
 * bad-input.test.ts (relative paths in a real job's result) and budgets.test.ts (watch lines against
 * the workflow history).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { readableSummary, summaryPath, type AttemptRecord, type JobSummary } from '../src/shared/summary';
import { renderStatus, type StatusView } from '../src/cli/status';
import { attemptEndLine, attemptEvents } from '../src/cli/watch';

const ROOT = '/srv/kiln/artifacts/jobs/train-spirals-abc123';

function summary(o: { paths: (p: string) => string; root?: string }): JobSummary {
  const cp = (step: number) => ({ step, path: o.paths(`checkpoints/step-${step}.json`), metrics: { loss: 0.123456789, step_time: 12.5 }, bytes: 4096 });
  return {
    jobId: 'train-spirals-abc123',
    model: 'spirals',
    outcome: 'failed',
    training_metrics: { final_loss: 0.0812345678, epochs: 2.5, steps: 200, duration_ms: 65_432 },
    validation_metrics: { val_loss: 0.33333333333, accuracy: 0.98765432 },
    resource_usage: { gpu_ids: ['0'], gpu: [{ index: '0', utilizationPct: 97, memoryUsedMiB: 1234.56789 }] },
    artifacts: { ...(o.root ? { root: o.root } : {}), model_path: o.paths('artifacts/model.json'), checkpoints: [cp(100), cp(200)], last_checkpoint: cp(200) },
    registry: { version: null, stage: null, complete: null, missing_metrics: [], decision: null },
    session_info: {
      attempts: 1,
      workers: ['host:1:gpu-gpu'],
      started_at: '2026-12-01T10:00:00.000Z',
      ended_at: '2026-12-01T10:01:05.432Z',
      cancellation_reason: null,
      failure: 'trainer exited with code 1 at step 200:\nTraceback …\nValueError: bad',
      resumed_from_steps: [],
      resume: null,
      skipped_checkpoints: [{ attempt: 1, step: 50, path: o.paths('checkpoints/step-50.json'), problem: 'size changed' }],
    },
  };
}

const statusOf = (s: JobSummary, progress: StatusView['progress'] = null): StatusView => ({
  jobId: s.jobId,
  runId: 'r1',
  workflowStatus: 'FAILED',
  source: progress ? 'query' : 'describe',
  queryError: progress ? null : 'no answer in 3000 ms',
  progress,
  pendingActivity: null,
  summary: s,
  model: 'spirals',
  phase: 'failed',
  trigger: 'manual',
  startTime: s.session_info.started_at,
  closeTime: s.session_info.ended_at,
});

describe('readable summaries', () => {
  test('numbers to 4 significant digits, integers untouched; paths relative to the job folder, which is recorded', () => {
    const r = readableSummary(summary({ paths: (p) => `${ROOT}/${p}` }), ROOT);
    assert.equal(r.training_metrics.final_loss, 0.08123);
    assert.equal(r.training_metrics.epochs, 2.5);
    assert.equal(r.training_metrics.duration_ms, 65_432);
    assert.deepEqual(r.validation_metrics, { val_loss: 0.3333, accuracy: 0.9877 });
    assert.deepEqual(r.resource_usage.gpu, [{ index: '0', utilizationPct: 97, memoryUsedMiB: 1235 }]);
    assert.equal(r.artifacts.root, ROOT);
    assert.equal(r.artifacts.model_path, 'artifacts/model.json');
    assert.deepEqual(r.artifacts.last_checkpoint, { step: 200, path: 'checkpoints/step-200.json', metrics: { loss: 0.1235, step_time: 12.5 }, bytes: 4096 });
    assert.deepEqual(r.artifacts.checkpoints.map((c) => c.path), ['checkpoints/step-100.json', 'checkpoints/step-200.json']);
    assert.equal(r.session_info.skipped_checkpoints?.[0]?.path, 'checkpoints/step-50.json');
    assert.equal(summaryPath(r, r.artifacts.model_path!), `${ROOT}/artifacts/model.json`);
    // Text is never rounded or cut.
    assert.equal(r.session_info.failure, 'trainer exited with code 1 at step 200:\nTraceback …\nValueError: bad');
  });

  test('a path outside the job folder stays absolute, also for a folder that only shares the prefix', () => {
    const s = summary({ paths: (p) => `${ROOT}/${p}` });
    s.artifacts.model_path = `${ROOT}-other/artifacts/model.json`;
    s.artifacts.checkpoints[0]!.path = '/data/base/step-0.json';
    const r = readableSummary(s, ROOT);
    assert.equal(r.artifacts.model_path, `${ROOT}-other/artifacts/model.json`);
    assert.equal(r.artifacts.checkpoints[0]!.path, '/data/base/step-0.json');
    assert.equal(summaryPath(r, r.artifacts.checkpoints[0]!.path), '/data/base/step-0.json');
  });

  test('the summary passed in is not changed (the job keeps full precision in its state)', () => {
    const s = summary({ paths: (p) => `${ROOT}/${p}` });
    const before = JSON.stringify(s);
    readableSummary(s, ROOT);
    assert.equal(JSON.stringify(s), before);
  });

  test('kiln status reads a new summary and one written before root existed (absolute paths, no attempt log, no end reason)', () => {
    const fresh = renderStatus(statusOf(readableSummary(summary({ paths: (p) => `${ROOT}/${p}` }), ROOT)));
    assert.match(fresh, new RegExp(`\\n  files: {6}in ${ROOT}: model artifacts/model\\.json, last checkpoint step 200 checkpoints/step-200\\.json\\n`));
    assert.match(fresh, /\n {2}bad ckpt: {3}step 50 checkpoints\/step-50\.json: size changed/);
    const old = summary({ paths: (p) => `${ROOT}/${p}` });
    assert.equal(old.artifacts.root, undefined);
    assert.equal(old.session_info.attempt_log, undefined);
    const text = renderStatus(statusOf(old));
    assert.match(text, new RegExp(`\\n  files: {6}model ${ROOT}/artifacts/model\\.json, last checkpoint step 200 ${ROOT}/checkpoints/step-200\\.json\\n`));
    assert.match(text, /\n {2}ended: {6}failed: trainer exited with code 1 at step 200 \(1 attempt\)\n/);
    assert.match(text, /\n {2}failure: {4}trainer exited with code 1 at step 200:\n {14}Traceback …\n {14}ValueError: bad/);
    assert.equal(summaryPath(old, old.artifacts.model_path!), `${ROOT}/artifacts/model.json`);
  });
});

describe('kiln watch: a line per attempt event', () => {
  const rec = (n: number, o: Partial<AttemptRecord>): AttemptRecord => ({ n, worker: null, started_at: '', ended_at: null, outcome: 'running', cause: null, resume_step: 0, last_step: null, steps_lost: null, ...o });

  test('an ended attempt: cause, step, resume point, steps lost', () => {
    assert.equal(
      attemptEndLine(rec(2, { worker: 'vm:12:gpu-gpu', outcome: 'interrupted', cause: 'worker lost (no heartbeat within the heartbeat timeout)', resume_step: 75, last_step: 92, steps_lost: 17 })),
      'attempt 2 on vm:12:gpu-gpu: worker lost (no heartbeat within the heartbeat timeout) at step 92, resumed from 75, 17 steps lost',
    );
    assert.equal(attemptEndLine(rec(1, { worker: 'vm:12:gpu-gpu', outcome: 'failed', cause: 'trainer exited with code 1 at step 3:\nTraceback', last_step: 3, steps_lost: 3 })), 'attempt 1 on vm:12:gpu-gpu: trainer exited with code 1 at step 3, from step 0, 3 steps lost');
    assert.equal(attemptEndLine(rec(3, { worker: 'b:1:gpu-gpu', outcome: 'completed', resume_step: 90, last_step: 200, steps_lost: 0 })), 'attempt 3 on b:1:gpu-gpu: completed at step 200, resumed from 90');
  });

  test('each event once, in order; a start only while that attempt trains; the final summary supplies the log without a query', () => {
    const seen = new Set<string>();
    const s = readableSummary(summary({ paths: (p) => `${ROOT}/${p}` }), ROOT);
    const log = [rec(1, { worker: 'a:1:gpu-gpu', outcome: 'interrupted', cause: 'worker lost', last_step: 40, steps_lost: 0 }), rec(2, { resume_step: 40 })];
    const progress = { phase: 'training', attempt: 2, workerId: 'b:1:gpu-gpu', attemptLog: log } as unknown as StatusView['progress'];
    const first = attemptEvents({ ...statusOf(s, progress), summary: null }, seen).map((e) => e.line);
    assert.deepEqual(first, ['attempt 1 on a:1:gpu-gpu: worker lost at step 40, from step 0', 'attempt 2 on b:1:gpu-gpu: training from step 40']);
    assert.deepEqual(attemptEvents({ ...statusOf(s, progress), summary: null }, seen), [], 'nothing twice');
    const queued = { ...(progress as object), phase: 'queued', attempt: 3, workerId: null, attemptLog: [...log, rec(3, { resume_step: 40 })] } as unknown as StatusView['progress'];
    assert.deepEqual(attemptEvents({ ...statusOf(s, queued), summary: null }, seen), [], 'a queued attempt has not started');
    s.session_info.attempt_log = [log[0]!, { ...log[1]!, worker: 'b:1:gpu-gpu', outcome: 'failed', cause: 'trainer exited with code 1', last_step: 41, steps_lost: 1 }];
    assert.deepEqual(attemptEvents(statusOf(s), seen).map((e) => e.line), ['attempt 2 on b:1:gpu-gpu: trainer exited with code 1 at step 41, resumed from 40, 1 step lost']);
  });
});
