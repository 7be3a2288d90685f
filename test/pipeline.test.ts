/**
 * The pipeline after training, end to end on a real dev server with real trainer processes:
 * train → evaluate (the example trainer's evaluate command) → register → promotion decision, the
 * approval flow (approve with `kiln approve`, reject with `temporal workflow signal`, timeout),
 * incomplete versions, registerVersion retried after its write, rollback through the real CLI, and the
 * registry read back from disk by fresh processes after the control worker restarts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { Worker } from '@temporalio/worker';
import { progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { readableNumber } from '../src/shared/progress';
import { formatMetric } from '../src/registry/promotion';
import { SCHEMA_VERSION, SqliteModelRegistry } from '../src/registry/sqlite';
import type { ModelVersion } from '../src/registry/types';
import { registryPath } from '../src/registry/open';
import { defaultConfigYaml, jobDir, KILN_BIN, startKilnEnv, temporalBinary, waitFor, type KilnTestEnv } from './helpers/kiln';

const execFileP = promisify(execFile);

const model = (name: string, promotion: string, required = '[val_loss, accuracy]') => `  ${name}:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
    requiredMetrics: ${required}
    promotion: ${promotion}`;

const MODELS = [
  model('ranked', '{ metric: val_loss, direction: min, minImprovement: 0.005, mode: auto }'),
  model('approve-me', '{ metric: accuracy, direction: max, mode: approval, approvalTimeout: 5m }'),
  model('reject-me', '{ metric: val_loss, direction: min, mode: approval, approvalTimeout: 5m }'),
  model('timeout-me', '{ metric: val_loss, direction: min, mode: approval, approvalTimeout: 3s }'),
  model('strict', '{ metric: val_loss, direction: min, mode: auto }', '[val_loss, accuracy, f1]'),
  model('retried', '{ metric: val_loss, direction: min, mode: auto }'),
].join('\n');

const WEAK = { epochs: 1, steps_per_epoch: 3, lr: 0.01 };
const STRONG = { epochs: 4, steps_per_epoch: 25, lr: 0.3 };

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

describe('pipeline: evaluate, register, promote', () => {
  let env: KilnTestEnv;
  let control: Worker;
  let reg: SqliteModelRegistry;

  /** `node bin/kiln --config <file> ...` as a real child process; never throws on a non-zero exit. */
  async function kiln(...args: string[]): Promise<CliResult> {
    try {
      const r = await execFileP(process.execPath, [KILN_BIN, '--config', env.configFile, ...args], {
        env: { ...process.env, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address, KILN_LOG_LEVEL: 'warn' },
      });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  async function train(name: string, params: Record<string, unknown> = {}): Promise<JobSummary> {
    const h = await env.submit(name, { params });
    return (await h.result()) as JobSummary;
  }

  /** Starts a job and waits until the workflow itself reports phase awaiting-approval. */
  async function untilAwaitingApproval(name: string) {
    const h = await env.submit(name);
    await waitFor(async () => (await h.query(progressQuery)).phase === 'awaiting-approval', 30_000, `${h.workflowId} to await approval`);
    return h;
  }

  const versionOf = async (s: JobSummary): Promise<ModelVersion> => {
    const v = (await reg.get(s.model, s.registry.version!));
    assert.ok(v, `${s.model} v${s.registry.version} in the registry`);
    return v;
  };

  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: MODELS }));
    control = await env.startControlWorker({ failAfterRegisterOnAttempts: [1], failAfterRegisterModels: ['retried'] });
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    reg = new SqliteModelRegistry(registryPath(env.config));
  });
  after(async () => {
    await reg?.close();
    await env?.cleanup();
  });

  test('train → evaluate → register → auto-promote; a better run promotes over it, a worse one stays a candidate', async () => {
    const first = await train('ranked', WEAK);
    assert.equal(first.outcome, 'completed');
    assert.deepEqual([first.registry.version, first.registry.stage, first.registry.complete], [1, 'production', true]);
    assert.equal(first.registry.decision, 'promoted: first version of the model (no production yet)');

    // The evaluate activity really ran the trainer's evaluate command on the model artifact.
    const evalLog = fs.readFileSync(path.join(jobDir(env, first.jobId), 'evaluate.log'), 'utf8');
    assert.match(evalLog, /evaluate .*: val_loss \d\.\d+ accuracy \d\.\d+ on \d+ held-out points/);
    const history = await env.client.workflow.getHandle(first.jobId).fetchHistory();
    const scheduled = (history.events ?? []).map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean);
    // poolUse is the queued phase's look at the pool while the train attempt waits for a slot.
    assert.deepEqual(scheduled.filter((n) => n !== 'poolUse'), ['prepareJob', 'train', 'evaluate', 'registerVersion']);
    assert.ok(scheduled.indexOf('poolUse') < scheduled.indexOf('evaluate'), `poolUse only while training waits (${scheduled.join(', ')})`);

    // Lineage, metrics and pins on the stored version.
    const v1 = await versionOf(first);
    const d = await env.client.workflow.getHandle(first.jobId).describe();
    assert.equal(v1.jobId, first.jobId);
    assert.equal(v1.runId, d.runId);
    assert.equal(v1.trainer, 'example');
    assert.equal(v1.params.lr, 0.01);
    assert.equal(v1.params.steps_per_epoch, 3);
    assert.match(v1.datasetFingerprint, /\S/);
    assert.equal(v1.baseCheckpoint, null);
    // The registry keeps full precision; the job summary the same numbers to 4 significant digits.
    assert.equal(readableNumber(v1.metrics.val_loss!), first.validation_metrics.val_loss);
    assert.equal(readableNumber(v1.metrics.accuracy!), first.validation_metrics.accuracy);
    assert.ok(v1.artifactPath && fs.existsSync(v1.artifactPath), 'model artifact on disk');
    assert.ok(v1.checkpointPath && fs.existsSync(v1.checkpointPath), 'checkpoint on disk');
    assert.ok((await reg.isPinned(v1.artifactPath)) && (await reg.isPinned(v1.checkpointPath)), 'artifact and checkpoint pinned against retention');
    assert.deepEqual(v1.decisions.map((x) => [x.kind, x.reason, x.by]), [['promoted', first.registry.decision, 'kiln']]);

    const better = await train('ranked', STRONG);
    const v1val = formatMetric(v1.metrics.val_loss!);
    const v2 = await versionOf(better);
    assert.deepEqual([better.registry.version, better.registry.stage], [2, 'production']);
    assert.ok(v2.metrics.val_loss! < v1.metrics.val_loss! - 0.005);
    assert.equal(better.registry.decision, `promoted: val_loss ${formatMetric(v2.metrics.val_loss!)} < ${v1val} - 0.005 (production v1)`);
    assert.equal(v2.decisions.at(-1)!.reason, better.registry.decision);
    assert.equal((await reg.get('ranked', 1))!.stage, 'archived');
    assert.match((await reg.get('ranked', 1))!.decisions.at(-1)!.reason, /^superseded by v2: promoted: val_loss/);

    const worse = await train('ranked', WEAK);
    const v3 = await versionOf(worse);
    assert.deepEqual([worse.registry.version, worse.registry.stage, worse.registry.complete], [3, 'candidate', true]);
    const expected = `kept candidate: val_loss ${formatMetric(v3.metrics.val_loss!)} is not < ${formatMetric(v2.metrics.val_loss!)} - 0.005 (production v2)`;
    assert.equal(worse.registry.decision, expected);
    assert.deepEqual(v3.decisions.map((x) => [x.kind, x.reason]), [['kept-candidate', expected]]);
    assert.equal((await reg.production('ranked'))!.version, 2);

    const shown = await kiln('models', 'show', 'ranked', '3', '--json');
    assert.equal(shown.code, 0, shown.stderr);
    assert.deepEqual(JSON.parse(shown.stdout), (await reg.get('ranked', 3)));
  });

  test('approval: `kiln approve` promotes, the decision names who and why', async () => {
    const h = await untilAwaitingApproval('approve-me');
    assert.equal((await reg.getByJob(h.workflowId))!.stage, 'candidate', 'not promoted before the approval');
    const r = await kiln('approve', h.workflowId, '--by', 'ana', '--note', 'eval report checked', '--wait', '--json');
    assert.equal(r.code, 0, r.stderr);
    const s = (await h.result()) as JobSummary;
    assert.deepEqual(JSON.parse(r.stdout), { ok: true, jobId: h.workflowId, signal: 'approve', by: 'ana', note: 'eval report checked', registry: s.registry });
    assert.equal(s.registry.stage, 'production');
    assert.equal(s.registry.decision, 'promoted: approved by ana (eval report checked): first version of the model (no production yet)');
    const v = await versionOf(s);
    assert.equal(v.stage, 'production');
    assert.deepEqual(v.decisions.map((x) => [x.kind, x.by, x.reason]), [['approved', 'ana', s.registry.decision!.replace(/^promoted: /, '')]]);

    // Once the job has ended there is nothing to approve: refused, nothing sent.
    const late = await kiln('approve', h.workflowId, '--json');
    assert.equal(late.code, 1);
    assert.equal(JSON.parse(late.stdout).error.code, 'NOT_AWAITING_APPROVAL');
    assert.match(late.stderr, /has ended \(completed/);
  });

  test('approval: reject through `temporal workflow signal` keeps a candidate, recorded with the reason', async () => {
    const h = await untilAwaitingApproval('reject-me');
    await execFileP(temporalBinary(), ['workflow', 'signal', '--address', env.address, '--workflow-id', h.workflowId, '--name', 'reject', '--input', '{"by":"bo","note":"worse on the rare class"}']);
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.registry.stage, 'candidate');
    assert.equal(s.registry.decision, 'rejected by bo (worse on the rare class): kept as candidate (was eligible: first version of the model (no production yet))');
    const v = await versionOf(s);
    assert.equal(v.stage, 'candidate');
    assert.deepEqual(v.decisions.map((x) => [x.kind, x.by, x.reason]), [['rejected', 'bo', s.registry.decision]]);
    assert.equal((await reg.production('reject-me')), null);
  });

  test('approval: a job cancelled while awaiting approval records that on the version and in its summary', async () => {
    const h = await untilAwaitingApproval('reject-me');
    const version = (await reg.getByJob(h.workflowId))!.version;
    await h.cancel();
    await assert.rejects(h.result());
    assert.equal((await h.describe()).status.name, 'CANCELLED');
    const s = ((await h.describe()).memo as { summary: JobSummary }).summary;
    assert.equal(s.outcome, 'cancelled');
    assert.deepEqual([s.registry.version, s.registry.stage], [version, 'candidate']);
    assert.match(s.registry.decision ?? '', /^job cancelled while awaiting approval: kept as candidate \(was eligible: /);
    assert.deepEqual((await reg.get('reject-me', version))!.decisions.map((x) => [x.kind, x.reason]), [['kept-candidate', s.registry.decision]]);
  });

  test('approval: no signal within approvalTimeout (3s) → stays a candidate, timeout recorded', async () => {
    const h = await untilAwaitingApproval('timeout-me');
    const s = (await h.result()) as JobSummary;
    // The wait ended by its own 3 s timer firing, not by a signal.
    const events = (await h.fetchHistory()).events ?? [];
    // The approval wait is the job's last timer (the queued phase's pool look-ups come before training).
    const timer = events.filter((e) => e.timerStartedEventAttributes).at(-1)!;
    assert.equal(Number(timer.timerStartedEventAttributes!.startToFireTimeout!.seconds), 3);
    const timerId = timer.timerStartedEventAttributes!.timerId;
    assert.ok(events.some((e) => e.timerFiredEventAttributes?.timerId === timerId), 'the approval timer fired');
    const signals = events.map((e) => e.workflowExecutionSignaledEventAttributes?.signalName).filter(Boolean);
    assert.ok(!signals.includes('approve') && !signals.includes('reject'), `no approval signal was sent (signals: ${signals.join(', ')})`);
    assert.equal(s.registry.stage, 'candidate');
    assert.equal(s.registry.decision, 'approval timed out after 3s: kept as candidate (was eligible: first version of the model (no production yet))');
    const v = await versionOf(s);
    assert.deepEqual(v.decisions.map((x) => [x.kind, x.reason]), [['kept-candidate', s.registry.decision]]);
    assert.equal((await reg.production('timeout-me')), null);
  });

  test('a required metric the trainer never emits → registered incomplete, never promotable, CLI refuses', async () => {
    const h = await env.submit('strict');
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.deepEqual([s.registry.version, s.registry.stage, s.registry.complete], [1, 'candidate', false]);
    assert.deepEqual(s.registry.missing_metrics, ['f1']);
    assert.equal(s.registry.decision, 'not promotable: incomplete, missing required metrics f1');
    assert.match((await h.query(progressQuery)).line, /v1 candidate INCOMPLETE \(missing f1\), not promotable/);
    const before = (await reg.get('strict', 1))!;
    assert.equal(before.complete, false);
    assert.deepEqual(before.missingMetrics, ['f1']);
    assert.ok(typeof before.metrics.val_loss === 'number', 'the metrics it did emit are kept');

    const refused = await kiln('models', 'promote', 'strict', '1', '--reason', 'ship it anyway', '--json');
    assert.equal(refused.code, 1);
    const err = JSON.parse(refused.stdout).error;
    assert.equal(err.code, 'INCOMPLETE');
    assert.match(err.message, /strict v1 is incomplete \(missing required metrics f1\).*nothing changed/);
    assert.match(refused.stderr, /missing required metrics f1/);
    const unknownVersion = await kiln('models', 'promote', 'strict', '7', '--reason', 'x');
    assert.equal(unknownVersion.code, 1);
    assert.match(unknownVersion.stderr, /model strict has no version 7; its versions: v1/);
    const unknownModel = await kiln('models', 'promote', 'nope', '1', '--reason', 'x', '--json');
    assert.equal(unknownModel.code, 1);
    assert.equal(JSON.parse(unknownModel.stdout).error.code, 'UNKNOWN_MODEL');
    assert.deepEqual((await reg.get('strict', 1)), before, 'nothing changed');
    assert.equal((await reg.production('strict')), null);
  });

  test('registerVersion failing after its write is retried and still leaves exactly one version', async () => {
    const h = await env.submit('retried');
    const s = (await h.result()) as JobSummary;
    assert.deepEqual([s.registry.version, s.registry.stage], [1, 'production']);
    const events = (await h.fetchHistory()).events ?? [];
    const regScheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'registerVersion')!;
    const started = events.find((e) => Number(e.activityTaskStartedEventAttributes?.scheduledEventId) === Number(regScheduled.eventId))!;
    assert.equal(started.activityTaskStartedEventAttributes!.attempt, 2, 'the activity ran a second time');
    assert.match(started.activityTaskStartedEventAttributes!.lastFailure?.message ?? '', /injected fault: failing registerVersion after the write \(attempt 1\)/);
    const versions = (await reg.list({ model: 'retried' }));
    assert.equal(versions.length, 1);
    assert.equal(versions[0]!.jobId, h.workflowId);
    assert.deepEqual(versions[0]!.decisions.map((x) => x.kind), ['promoted']);

    // A later run reusing the job id trained another model: refused, not passed off as v1.
    const again = await env.submit('retried', { jobId: h.workflowId });
    await assert.rejects(again.result(), (err: unknown) => {
      const cause = (err as { cause?: { message?: string } }).cause;
      assert.match(cause?.message ?? '', /already registered as retried v1 by an earlier run .*cannot register under the same job id/);
      return true;
    });
    assert.deepEqual((await reg.list({ model: 'retried' })), versions, 'the registry is unchanged');
  });

  test('rollback with the CLI (a real child process) re-points production, recorded with the reason', async () => {
    assert.equal((await reg.production('ranked'))!.version, 2);
    const back = await kiln('models', 'rollback', 'ranked', '--reason', 'v2 regressed on live traffic', '--by', 'ana', '--json');
    assert.equal(back.code, 0, back.stderr);
    assert.deepEqual(JSON.parse(back.stdout), { ok: true, model: 'ranked', from: 2, to: 1, stage: 'production', changed: true, reason: 'v2 regressed on live traffic', by: 'ana' });
    assert.equal((await reg.production('ranked'))!.version, 1);
    assert.equal((await reg.get('ranked', 2))!.stage, 'archived');
    assert.deepEqual(
      [(await reg.get('ranked', 1))!.decisions.at(-1), (await reg.get('ranked', 2))!.decisions.at(-1)].map((x) => [x!.kind, x!.by, x!.reason]),
      [
        ['rollback', 'ana', 'rollback from v2: v2 regressed on live traffic'],
        ['rollback', 'ana', 'rolled back to v1: v2 regressed on live traffic'],
      ],
    );

    const forward = await kiln('models', 'rollback', 'ranked', '--to', '2', '--reason', 'false alarm', '--json');
    assert.equal(forward.code, 0, forward.stderr);
    assert.deepEqual([JSON.parse(forward.stdout).from, JSON.parse(forward.stdout).to], [1, 2]);
    assert.equal((await reg.production('ranked'))!.version, 2);

    const snapshot = (await reg.list({ model: 'ranked' }));
    const bad = await kiln('models', 'rollback', 'ranked', '--to', '99', '--reason', 'x', '--json');
    assert.equal(bad.code, 1);
    assert.equal(JSON.parse(bad.stdout).error.code, 'UNKNOWN_VERSION');
    const noReason = await kiln('models', 'rollback', 'ranked');
    assert.equal(noReason.code, 2);
    assert.match(noReason.stderr, /--reason is required/);
    assert.deepEqual((await reg.list({ model: 'ranked' })), snapshot, 'refusals changed nothing');
  });

  test('the registry survives a restart: a fresh process reads it from disk, a restarted worker continues it', async () => {
    const before = (await reg.list());
    const listed = await kiln('models', 'list', '--json');
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout), before);
    const { stdout } = await execFileP(process.execPath, [
      '-e',
      `const Database = require('better-sqlite3');
       const db = new Database(process.argv[1], { readonly: true });
       console.log(JSON.stringify({ user: db.pragma('user_version', { simple: true }), migrations: db.prepare('SELECT version FROM schema_migrations ORDER BY version').all().map((r) => r.version) }));`,
      registryPath(env.config),
    ], { cwd: path.dirname(KILN_BIN) });
    assert.deepEqual(JSON.parse(stdout), { user: SCHEMA_VERSION, migrations: Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1) });

    control.shutdown();
    await waitFor(() => control.getState() === 'STOPPED', 30_000, 'the control worker to stop');
    control = await env.startControlWorker();
    const next = await train('ranked', STRONG);
    assert.equal(next.registry.version, 4, 'numbering continues from the stored versions');
    assert.match(next.registry.decision ?? '', /\(production v2\)$/, 'compared against the stored production version');
    assert.equal((await reg.list()).length, before.length + 1);
    const shown = await kiln('models', 'show', 'ranked', '--json');
    const view = JSON.parse(shown.stdout) as { production: number; versions: ModelVersion[] };
    assert.deepEqual(view.versions.map((v) => v.version), [1, 2, 3, 4]);
    assert.equal(view.production, (await reg.production('ranked'))!.version);
  });
});
