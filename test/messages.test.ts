/**
 * Nothing a client sends can wedge a job (issue 13): every signal, update and query of TrainingJob and
 * RetrainModel gets random and malformed payloads on a real dev server, from the SDK client and from
 * the real `temporal` CLI. The job must never fail a workflow task, must keep training and answering
 * queries, and must end up in the state of the last accepted control message, whatever the timing.
 * The histories are replayed to show the handlers stay deterministic.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { controlJob } from '../src/client/jobs';
import { progressQuery, statusQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { workflowSource } from '../workers/common';
import { defaultConfigYaml, REPO, startKilnEnv, temporalBinary, waitFor, type KilnTestEnv } from './helpers/kiln';
import { runKiln } from './helpers/processes';

const execFileP = promisify(execFile);
const LONG = { epochs: 500, steps_per_epoch: 10, step_delay_ms: 40, checkpoint_every: 5 };

/** A small seeded PRNG, so a failing payload can be reproduced from the seed printed with it. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random JSON-ish value of bounded depth: numbers, odd strings (unicode, NUL), arrays, objects. */
function randomValue(r: () => number, depth = 0): unknown {
  const k = Math.floor(r() * (depth > 2 ? 5 : 8));
  switch (k) {
    case 0:
      return Math.floor(r() * 2e9) - 1e9;
    case 1:
      return r() < 0.5 ? true : false;
    case 2:
      return ['', '\u0000', 'x'.repeat(Math.floor(r() * 5000)), '💥\u202e', 'null'][Math.floor(r() * 5)];
    case 3:
      return r() * 1e300;
    case 4:
      return null;
    case 5:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      const keys = ['reason', 'by', 'note', 'step', 'attempt', 'token', 'metrics', '__proto__', 'constructor', 'zz'];
      for (let i = 0; i < 1 + Math.floor(r() * 3); i++) o[keys[Math.floor(r() * keys.length)]!] = randomValue(r, depth + 1);
      return o;
    }
  }
}

/** A payload the control handlers must refuse: never undefined/null/{} or a well-typed object (those are valid). */
function invalidControlPayload(r: () => number): unknown {
  for (;;) {
    const v = randomValue(r);
    if (v === null || v === undefined) continue;
    if (typeof v === 'object' && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      const ok = Object.entries(o).every(([k, x]) => ['reason', 'by', 'note'].includes(k) && typeof x === 'string' && x.length <= 2000);
      if (ok) continue;
    }
    return v;
  }
}

async function workflowTaskFailures(h: WorkflowHandle): Promise<string[]> {
  const history = await h.fetchHistory();
  return (history.events ?? []).filter((e) => e.workflowTaskFailedEventAttributes).map((e) => e.workflowTaskFailedEventAttributes?.failure?.message ?? '?');
}

async function replay(h: WorkflowHandle): Promise<void> {
  const history = await h.fetchHistory();
  await Worker.runReplayHistory(workflowSource(), history, h.workflowId);
}

function temporal(env: KilnTestEnv, args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return execFileP(temporalBinary(), [...args, '--address', env.address], { cwd: REPO }).then(
    (r) => ({ ...r, code: 0 }),
    (e: { stdout: string; stderr: string; code: number }) => ({ stdout: e.stdout, stderr: e.stderr, code: e.code }),
  );
}

describe('messages: malformed, forged and racing input never wedges a job', () => {
  let env: KilnTestEnv;
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        extra: `datasets:\n  roots: [.]\n`,
      }),
    );
    await env.startControlWorker();
    await env.startGpuWorker({ slots: 3 });
  });
  after(async () => env?.cleanup());

  const step = async (h: WorkflowHandle): Promise<number> => (await h.query(progressQuery)).step;

  test('random payloads to every signal and query: no workflow-task failure, the job unchanged and counting what it dropped', async () => {
    const h = await env.submit('spirals', { params: LONG });
    await waitFor(async () => (await h.query(progressQuery)).step > 0, 60_000, 'training started');
    const seed = Date.now() % 100000;
    const r = rng(seed);
    const names = ['cancel', 'pause', 'resume', 'approve', 'reject', 'kiln.report', 'no-such-signal'];
    let sent = 0;
    for (let i = 0; i < 70; i++) {
      const name = names[i % names.length]!;
      const payload = name === 'kiln.report' || name === 'no-such-signal' ? randomValue(r) : invalidControlPayload(r);
      await h.signal(name, payload);
      sent++;
    }
    // A forged report that is well-formed but carries no token is dropped too.
    await h.signal('kiln.report', { attempt: 99, workerId: 'forger', step: 999_999, totalSteps: 1, epoch: null, totalEpochs: null, metrics: { loss: 0 }, firstStep: null, resumedFrom: null, lastCheckpoint: null, checkpoints: [], checkpointBytes: 0, validation: {}, gpuIds: [], gpu: null, malformedEvents: 0, stepsPerSec: null, etaMs: null, lastProgressAt: null });
    sent++;
    // Queries with arguments they do not take still answer.
    for (let i = 0; i < 10; i++) {
      const q = await h.query<{ jobId: string }, unknown[]>(i % 2 ? 'progress' : 'status', randomValue(r), randomValue(r));
      assert.equal(q.jobId, h.workflowId);
    }
    const p = await waitFor(async () => {
      const q = await h.query(progressQuery);
      return q.ignoredMessages === sent ? q : null;
    }, 30_000, `all ${sent} messages counted as ignored (seed ${seed})`);
    assert.equal(p.phase, 'training', `seed ${seed}`);
    assert.ok(p.step < 999_999, 'the forged report did not move progress');
    assert.notEqual(p.workerId, 'forger');
    assert.equal(p.cancelReason, null);
    assert.equal((await h.describe()).status.name, 'RUNNING');
    const before = p.step;
    await waitFor(async () => (await step(h)) > before + 5, 30_000, 'still training after the flood');
    assert.deepEqual(await workflowTaskFailures(h), [], `seed ${seed}`);
    const st = await h.query(statusQuery);
    assert.equal(st.phase, 'training');

    // A valid cancel, as an Update, still ends it: accepted, with the reason, then cancelled.
    const answer = await controlJob(env.client, h.workflowId, 'cancel', { reason: 'after the flood' });
    assert.equal(answer.accepted, true);
    await assert.rejects(h.result(), WorkflowFailedError);
    const d = await h.describe();
    assert.equal(d.status.name, 'CANCELLED');
    assert.equal((d.memo?.summary as JobSummary).session_info.cancellation_reason, 'after the flood');
    assert.deepEqual(await workflowTaskFailures(h), []);
    await replay(h);
  });

  test('the real temporal CLI: malformed signals are dropped, Updates answer accepted or rejected with the reason', async () => {
    const h = await env.submit('spirals', { params: LONG });
    await waitFor(async () => (await step(h)) > 0, 60_000, 'training started');
    for (const [name, input] of [
      ['cancel', '{"reason":5}'],
      ['kiln.report', '"garbage"'],
      ['pause', '[1,2,3]'],
      ['approve', '{"by":{"$ne":1}}'],
    ] as const) {
      const r = await temporal(env, ['workflow', 'signal', '--workflow-id', h.workflowId, '--name', name, '--input', input]);
      assert.equal(r.code, 0, r.stderr);
    }
    const p = await waitFor(async () => {
      const q = await h.query(progressQuery);
      return q.ignoredMessages >= 4 ? q : null;
    }, 30_000, 'the four malformed signals dropped');
    assert.equal(p.phase, 'training');
    assert.match(p.lastIgnored ?? '', /approve/);

    const upd = (name: string, input?: string) => temporal(env, ['workflow', 'update', 'execute', '--workflow-id', h.workflowId, '--name', name, ...(input ? ['--input', input] : [])]);
    const noApproval = await upd('approve', '{"by":"ana"}');
    assert.notEqual(noApproval.code, 0);
    assert.match(`${noApproval.stdout}${noApproval.stderr}`, /approve refused: no approval pending \(phase training\)/);
    const badInput = await upd('cancel', '{"reason":5}');
    assert.notEqual(badInput.code, 0);
    assert.match(`${badInput.stdout}${badInput.stderr}`, /cancel refused: invalid cancel input: cancel\.reason: /);
    const resumeFirst = await upd('resume');
    assert.match(`${resumeFirst.stdout}${resumeFirst.stderr}`, /resume refused: the job is not paused \(phase training\)/);

    const paused = await upd('pause', '{"reason":"look at the loss"}');
    assert.equal(paused.code, 0, paused.stderr);
    assert.match(paused.stdout, /pausing: the trainer checkpoints and frees its GPU/);
    const twice = await upd('pause');
    assert.match(`${twice.stdout}${twice.stderr}`, /pause refused: the job is already paused/);
    await waitFor(async () => (await h.query(progressQuery)).phase === 'paused', 60_000, 'paused');
    const resumed = await upd('resume');
    assert.equal(resumed.code, 0, resumed.stderr);
    const at = await step(h);
    await waitFor(async () => (await step(h)) > at, 60_000, 'training again after resume');

    // kiln's own verbs follow the job's answer in their exit codes.
    const k = (args: string[]) => runKiln(env, args);
    const approve = await k(['approve', h.workflowId, '--json']);
    assert.equal(approve.code, 1);
    assert.equal(JSON.parse(approve.stdout).error.code, 'NOT_AWAITING_APPROVAL');
    const resumeNotPaused = await k(['resume', h.workflowId, '--json']);
    assert.equal(resumeNotPaused.code, 1);
    assert.equal(JSON.parse(resumeNotPaused.stdout).code, 'NOT_PAUSED');
    const cancel = await k(['cancel', h.workflowId, '--reason', 'done looking', '--json']);
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.equal(JSON.parse(cancel.stdout).accepted, true);
    await assert.rejects(h.result(), WorkflowFailedError);
    const late = await k(['pause', h.workflowId, '--json']);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /the job already ended/);
    assert.deepEqual(await workflowTaskFailures(h), []);
    await replay(h);
  });

  test('pause/resume in any order with 0-200 ms gaps: the job ends in the state of the last accepted one', async () => {
    const h = await env.submit('spirals', { params: LONG });
    await waitFor(async () => (await step(h)) > 0, 60_000, 'training started');
    const sequences: Array<{ msgs: Array<'pause' | 'resume'>; gap: number; expect: 'paused' | 'training' }> = [
      { msgs: ['pause', 'resume'], gap: 0, expect: 'training' },
      { msgs: ['resume', 'pause'], gap: 0, expect: 'paused' },
      { msgs: ['resume'], gap: 0, expect: 'training' },
      { msgs: ['pause', 'resume', 'pause'], gap: 50, expect: 'paused' },
      { msgs: ['resume', 'resume'], gap: 200, expect: 'training' },
      { msgs: ['pause', 'pause', 'resume'], gap: 137, expect: 'training' },
      { msgs: ['pause', 'resume', 'pause', 'resume'], gap: 0, expect: 'training' },
    ];
    for (const s of sequences) {
      for (const m of s.msgs) {
        await h.signal(m);
        if (s.gap) await new Promise((r) => setTimeout(r, s.gap));
      }
      const what = `${s.msgs.join(',')} with ${s.gap} ms gaps → ${s.expect}`;
      if (s.expect === 'paused') {
        await waitFor(async () => (await h.query(progressQuery)).phase === 'paused', 60_000, what);
        await new Promise((r) => setTimeout(r, 1500));
        assert.equal((await h.query(progressQuery)).phase, 'paused', `${what}: stays paused`);
      } else {
        await waitFor(async () => (await h.query(progressQuery)).phase === 'training', 60_000, what);
        const at = await step(h);
        await waitFor(async () => (await step(h)) > at, 60_000, `${what}: steps advance`);
      }
    }
    await controlJob(env.client, h.workflowId, 'cancel', { reason: 'sequences done' });
    await assert.rejects(h.result(), WorkflowFailedError);
    assert.deepEqual(await workflowTaskFailures(h), []);
    await replay(h);
  });

  test('raw temporal workflow start with a bad spec: non-retryable in one attempt, naming the problem; a neighbour keeps training', async () => {
    const neighbour = await env.submit('spirals', { params: LONG });
    await waitFor(async () => (await step(neighbour)) > 0, 60_000, 'neighbour training');
    fs.mkdirSync(path.join(env.home, 'data'), { recursive: true });
    execFileSync('mkfifo', [path.join(env.home, 'data', 'pipe')]);
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-outside-'));
    fs.writeFileSync(path.join(outside, 'data.csv'), '1,2\n');
    const base = { trainer: 'example', params: {}, dataset: 'synthetic://spirals/v1' };
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['unknown-model', { ...base, model: 'nope' }, /model: unknown model "nope" \(defined models: spirals/],
      ['zero-heartbeat', { ...base, model: 'spirals', timeouts: { heartbeat: 0 } }, /timeouts\.heartbeat: 0 ms is below the minimum of 1s/],
      ['shadow', { ...base, model: 'spirals', dataset: 'file:///etc/shadow' }, /dataset file:\/\/\/etc\/shadow resolves to \/etc\/shadow, outside the allowed dataset roots/],
      ['fifo', { ...base, model: 'spirals', dataset: 'data/pipe' }, /is a FIFO \(named pipe\)/],
      ['outside', { ...base, model: 'spirals', dataset: `file://${outside}/data.csv` }, /outside the allowed dataset roots/],
    ];
    try {
      for (const [name, spec, re] of cases) {
        const id = `raw-${name}-${Date.now()}`;
        const started = await temporal(env, ['workflow', 'start', '--type', 'TrainingJob', '--task-queue', env.controlQueue, '--workflow-id', id, '--input', JSON.stringify(spec)]);
        assert.equal(started.code, 0, started.stderr);
        const h = env.client.workflow.getHandle(id);
        await assert.rejects(h.result(), (e: unknown) => e instanceof WorkflowFailedError && re.test(String(e.cause?.message)), name);
        const events = (await h.fetchHistory()).events ?? [];
        const attempts = events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
        assert.deepEqual(attempts, [1], `${name}: prepareJob ran once, not retried`);
        assert.deepEqual(await workflowTaskFailures(h), [], name);
      }
    } finally {
      fs.rmSync(outside, { recursive: true, force: true });
      fs.rmSync(path.join(env.home, 'data', 'pipe'), { force: true });
    }
    const at = await step(neighbour);
    await waitFor(async () => (await step(neighbour)) > at, 30_000, 'the neighbour still advances: the control worker was never blocked');
    await controlJob(env.client, neighbour.workflowId, 'cancel', { reason: 'done' });
    await assert.rejects(neighbour.result(), WorkflowFailedError);
  });

  test('RetrainModel: bad input fails once, non-retryably, naming it; random signals and query args never fail a task', async () => {
    const bad = await env.client.workflow.start('RetrainModel', { taskQueue: env.controlQueue, workflowId: `retrain-bad-${Date.now()}`, args: [{ model: 7, trigger: 'sometimes' }] });
    await assert.rejects(bad.result(), (e: unknown) => e instanceof WorkflowFailedError && /invalid RetrainModel input/.test(String(e.cause?.message)) && /input\.model/.test(String(e.cause?.message)));
    const r = rng(7);
    const h = await env.client.workflow.start('RetrainModel', { taskQueue: env.controlQueue, workflowId: `retrain-fuzz-${Date.now()}`, args: [{ model: 'spirals', trigger: 'manual' }] });
    for (let i = 0; i < 10; i++) await h.signal(['cancel', 'kiln.report', 'x'][i % 3]!, randomValue(r)).catch(() => undefined);
    await h.result().catch(() => undefined);
    assert.deepEqual(await workflowTaskFailures(h), []);
    assert.deepEqual(await workflowTaskFailures(bad), []);
    await replay(h);
  });
});
