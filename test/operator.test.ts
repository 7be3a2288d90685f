/**
 * What an operator sees (issue 14): the `queued` phase of a job waiting for a slot, why a job ended
 * (cancel by kiln, by the raw signal, by `temporal workflow cancel`; a failing trainer) in Current
 * Details (read through the Temporal API: the `__temporal_workflow_metadata` query), `kiln status` and
 * `kiln list`, and `kiln doctor`'s live workers after a SIGKILL. A real dev server, a control worker,
 * GPU workers as child processes, the real CLI.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { temporal } from '@temporalio/proto';
import { KILN_BIN, defaultConfigYaml, startKilnEnv, temporalBinary, waitFor, isAlive, type KilnTestEnv } from './helpers/kiln';
import { SPIRALS_MODEL } from './helpers/fixtures';

const run = promisify(execFile);

/** ~100 s if left alone: long enough to queue behind and to cancel. */
const LONG = { params: { epochs: 100, step_delay_ms: 100 } };

type Check = { id: string; status: string; detail: string; hint?: string };

describe('operator views: queued, end reasons, live workers', () => {
  let env: KilnTestEnv;

  const kiln = async (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
    try {
      const r = await run(process.execPath, [KILN_BIN, ...args], { env: { ...process.env, KILN_CONFIG: env.configFile, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address, KILN_LOG_LEVEL: 'warn', KILN_USER: 'ann' }, timeout: 60_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
    }
  };
  const kilnJson = async <T>(args: string[]): Promise<T> => {
    const r = await kiln([...args, '--json']);
    assert.equal(r.code, 0, `kiln ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const phaseOf = async (id: string) => (await env.client.workflow.getHandle(id).describe()).typedSearchAttributes.getAll().find((p) => p.key.name === 'KilnPhase')?.value as string | undefined;
  const detailsOf = async (id: string) => ((await env.client.workflow.getHandle(id).query('__temporal_workflow_metadata')) as { currentDetails: string }).currentDetails;
  const training = async (id: string) => {
    const s = await kilnJson<{ phase: string; progress: { step: number } | null }>(['status', id]);
    return s.phase === 'training' && (s.progress?.step ?? 0) > 0;
  };
  const doctor = async () => {
    const r = await kiln(['doctor', '--json', '--control-queue', env.controlQueue]);
    return new Map((JSON.parse(r.stdout) as { checks: Check[] }).checks.map((c) => [c.id, c]));
  };

  before(async () => {
    const yaml = defaultConfigYaml({
      models: SPIRALS_MODEL,
      timeouts: `  heartbeat: 4s\n  stall: 20s\n  cancelGrace: 5s\n  maxAttempts: 2`,
    });
    env = await startKilnEnv(yaml);
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
  });
  after(async () => {
    await env?.cleanup();
  });

  test('a third job on a 2-slot pool is queued (KilnPhase, Current Details, status, list) until a slot frees; each cancel path says why', async () => {
    const [a, b] = [await env.submit('spirals', LONG), await env.submit('spirals', LONG)];
    await waitFor(async () => (await training(a.workflowId)) && (await training(b.workflowId)), 60_000, 'two jobs training', 300);
    const c = await env.submit('spirals', LONG);
    const queuedLine = /^queued: waiting for a slot in pool gpu \(2\/2 busy, 1 live worker\)$/;
    await waitFor(async () => queuedLine.test(await detailsOf(c.workflowId)), 30_000, 'the queued line with the pool use');
    assert.equal(await phaseOf(c.workflowId), 'queued');
    const st = await kiln(['status', c.workflowId]);
    assert.match(st.stdout, new RegExp(`^${c.workflowId}  queued `));
    assert.match(st.stdout, /progress: {3}queued: waiting for a slot in pool gpu \(2\/2 busy, 1 live worker\)/);
    assert.match(st.stdout, /worker: -/, 'a queued job runs on no worker');
    const listed = await kilnJson<Array<{ jobId: string; phase: string }>>(['list', '--phase', 'queued']);
    assert.deepEqual(listed.map((r) => r.jobId), [c.workflowId]);
    // kiln watch (plain lines) says what it waits for.
    const watcher = spawn(process.execPath, [KILN_BIN, 'watch', c.workflowId, '--interval', '300'], { env: { ...process.env, KILN_CONFIG: env.configFile, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address }, stdio: ['ignore', 'pipe', 'pipe'] });
    let watched = '';
    watcher.stdout.on('data', (d: Buffer) => (watched += d.toString('utf8')));
    const watcherExited = new Promise((r) => watcher.once('close', r));
    try {
      await waitFor(() => watched.includes(`${c.workflowId} queued: waiting for a slot in pool gpu (2/2 busy, 1 live worker)`), 20_000, `kiln watch to show the queued line (got ${JSON.stringify(watched)})`);
    } finally {
      watcher.kill('SIGKILL');
      await watcherExited;
    }

    // kiln cancel --reason frees a slot: the queued job starts.
    const cancel = await kiln(['cancel', a.workflowId, '--reason', 'wrong lr', '--wait']);
    assert.equal(cancel.code, 0, cancel.stderr);
    await waitFor(() => training(c.workflowId), 60_000, 'the queued job to start training', 300);
    assert.equal(await phaseOf(c.workflowId), 'training');
    assert.equal(await detailsOf(a.workflowId), 'cancelled: wrong lr (by kiln cancel, ann)');
    assert.equal(await phaseOf(a.workflowId), 'cancelled');

    // The reason is in the run's own history too, where the Web UI shows the cancel request.
    const history = await env.client.workflow.getHandle(a.workflowId).fetchHistory();
    const req = (history.events ?? []).find((e: temporal.api.history.v1.IHistoryEvent) => e.workflowExecutionCancelRequestedEventAttributes);
    assert.equal(req?.workflowExecutionCancelRequestedEventAttributes?.cause, 'wrong lr');

    // The raw signal (as the Temporal CLI or Web UI sends it), and temporal workflow cancel.
    await b.signal('cancel', { reason: 'raw signal test' });
    const bin = temporalBinary();
    await run(bin, ['workflow', 'cancel', '--workflow-id', c.workflowId, '--address', env.address, '--namespace', 'default']);
    for (const h of [b, c]) await waitFor(async () => (await h.describe()).status.name === 'CANCELLED', 60_000, `${h.workflowId} cancelled`, 300);
    assert.equal(await detailsOf(b.workflowId), 'cancelled: raw signal test (by the cancel signal)');
    assert.equal(await detailsOf(c.workflowId), 'cancelled: no reason given (by temporal workflow cancel)');

    const rows = await kilnJson<Array<{ jobId: string; endReason: string | null; ageSec: number; durationSec: number; start: string }>>(['list']);
    const byId = new Map(rows.map((r) => [r.jobId, r]));
    assert.equal(byId.get(a.workflowId)?.endReason, 'cancelled: wrong lr (by kiln cancel, ann)');
    assert.equal(byId.get(b.workflowId)?.endReason, 'cancelled: raw signal test (by the cancel signal)');
    assert.equal(byId.get(c.workflowId)?.endReason, 'cancelled: no reason given (by temporal workflow cancel)');
    assert.deepEqual(rows.map((r) => r.start), [...rows.map((r) => r.start)].sort().reverse(), 'newest first');
    assert.ok(rows.every((r) => r.durationSec <= r.ageSec), 'a run lasts no longer than its age');
    const human = await kiln(['list']);
    assert.match(human.stdout, /^JOB +MODEL +PHASE +TRIGGER +STATUS +STARTED +AGE +TOOK +END/);
    assert.match(human.stdout, new RegExp(`${a.workflowId} .* cancelled: wrong lr \\(by kiln cancel, ann\\)`));
    const sa = await kiln(['status', a.workflowId]);
    assert.match(sa.stdout, /ended: {6}cancelled: wrong lr \(by kiln cancel, ann\)/);
  });

  test('a failing trainer: queued for each retry, then the cause in Current Details, the failure, kiln status (full, with the log tail) and kiln list', async () => {
    const h = await env.submit('spirals', { params: { epochs: 1, steps_per_epoch: 20, step_delay_ms: 300, checkpoint_every: 1000, fault: 'crash', fault_at_step: 2, fault_attempts: [1, 2] } });
    const seen = new Set<string>();
    await waitFor(
      async () => {
        const d = await detailsOf(h.workflowId).catch(() => '');
        if (d) seen.add(d);
        return (await h.describe()).status.name !== 'RUNNING';
      },
      90_000,
      'the failing job to end',
      50,
    );
    assert.ok([...seen].some((d) => /^queued: retry 2 after trainer exited with code 1 at step 2, in 1s$/.test(d)), `details seen: ${[...seen].join(' | ')}`);
    const failure = await h.result().then(
      () => null,
      (err: Error & { cause?: Error }) => err.cause?.message ?? err.message,
    );
    assert.match(failure ?? '', /^trainer failed 2 times in a row without progress \(timeouts\.maxAttempts: 2\); last: trainer exited with code 1 at step 2/);
    const reason = /^failed: trainer failed 2 times in a row without progress \(timeouts\.maxAttempts: 2\); last: trainer exited with code 1 at step 2 \(2 attempts\)$/;
    assert.match(await detailsOf(h.workflowId), reason);
    assert.equal(await phaseOf(h.workflowId), 'failed');

    const st = await kiln(['status', h.workflowId]);
    assert.match(st.stdout, /ended: {6}failed: trainer failed 2 times .* \(2 attempts\)/);
    assert.match(st.stdout, /failure: {4}trainer failed 2 times .*; last: trainer exited with code 1 at step 2:\n {14}/, 'the message goes on past its first line');
    assert.match(st.stdout, /injected fault: crash after step 2/, 'with the log tail');
    const rows = await kilnJson<Array<{ jobId: string; endReason: string | null }>>(['list', '--phase', 'failed']);
    assert.match(rows.find((r) => r.jobId === h.workflowId)?.endReason ?? '', reason);
    // The phases it went through, from the run's history: queued and training for each attempt.
    const history = await h.fetchHistory();
    const phases = (history.events ?? [])
      .map((e) => e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.KilnPhase?.data)
      .filter((d): d is Uint8Array => Boolean(d))
      .map((d) => JSON.parse(Buffer.from(d).toString('utf8')) as string);
    const changes = phases.filter((p, i) => p !== phases[i - 1]);
    assert.deepEqual(changes, ['preparing', 'queued', 'training', 'queued', 'training', 'failed']);
  });

  test('doctor: live workers only (a SIGKILLed one drops out within ~20 s), slots busy and free, the worker and heartbeat age of a running job', async () => {
    const second = await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    const both = await waitFor(async () => {
      const d = (await doctor()).get('pollers:kiln-gpu-gpu');
      return d && new RegExp(`activity: 2 poller\\(s\\) .*:${second.pid}:gpu-gpu`).test(d.detail) ? d : null;
    }, 30_000, 'two live GPU workers');
    assert.match(both.detail, /slots: 0 busy, 4 free of 4/);

    const job = await env.submit('spirals', LONG);
    await waitFor(() => training(job.workflowId), 60_000, 'the job training', 300);
    const checks = await doctor();
    assert.match(checks.get('pollers:kiln-gpu-gpu')!.detail, /slots: 1 busy, 3 free of 4/);
    const running = checks.get('running:gpu')!;
    assert.equal(running.status, 'ok');
    assert.match(running.detail, new RegExp(`^${job.workflowId} train on [^ ]+:\\d+:gpu-gpu, last heartbeat \\d+\\.\\d s ago$`));

    await job.cancel();
    await waitFor(async () => (await job.describe()).status.name !== 'RUNNING', 60_000, 'the job to end');
    second.kill('SIGKILL');
    await second.exited;
    assert.equal(isAlive(second.pid), false);
    const killedAt = Date.now();
    const after = await waitFor(async () => {
      const d = (await doctor()).get('pollers:kiln-gpu-gpu');
      return d && /activity: 1 poller\(s\)/.test(d.detail) ? d : null;
    }, 25_000, 'the killed worker to drop out of the live pollers', 1000);
    assert.ok(Date.now() - killedAt < 25_000);
    assert.doesNotMatch(after.detail.split('; not live:')[0]!, new RegExp(`:${second.pid}:gpu-gpu`), 'the dead worker is not counted as live');
    assert.match(after.detail, new RegExp(`not live: .*:${second.pid}:gpu-gpu \\(last poll \\d+s ago\\)`), 'but listed as not live');
    assert.match(after.detail, /slots: 0 busy, 2 free of 2/);
    assert.equal(after.status, 'ok', 'the live worker keeps the pool green');
  });
});
