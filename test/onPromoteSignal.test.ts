/**
 * `promotion.onPromote: { signal: { workflowId, name } }` on a real dev server with real trainer
 * processes: the receiver is a real running workflow (on a task queue nobody polls, so every signal
 * it got stays in its history, as `temporal workflow show` prints it). Two promotions and a rollback
 * → exactly three signals with the right versions and change ids; a resend of a change (what a retry
 * after a kill between the send and the registry record does) is dropped by the server; a control
 * worker SIGKILLed inside registration after the signal → still one signal; a missing receiver fails
 * the CLI with the cause and the rerun command; bad config shapes are refused by name.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import type { JobSummary } from '../src/shared/summary';
import { submitJob } from '../src/client/jobs';
import { parseConfigText } from '../src/config/load';
import { buildSpec } from '../src/config/spec';
import { sendPromotionSignal, type PromotionSignal } from '../src/registry/onPromote';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { registryPath } from '../src/registry/open';
import { defaultConfigYaml, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';
import { killAllStarted, runKiln, startControlWorkerProcess } from './helpers/processes';

const WEAK = { epochs: 1, steps_per_epoch: 3, lr: 0.01 };
const STRONG = { epochs: 4, steps_per_epoch: 25, lr: 0.3 };
const SIGNAL = 'kiln.promoted';

const model = (name: string) => `  ${name}:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
    requiredMetrics: [val_loss, accuracy]
    promotion: { metric: val_loss, direction: min, mode: auto, onPromote: { signal: { workflowId: serving-${name}, name: ${SIGNAL} } } }`;

describe('onPromote signals a named workflow', { concurrency: 1 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-onpromote-signal-'));
  const idle = `kiln-test-no-poller-${process.pid}`;
  let env: KilnTestEnv;
  let reg: SqliteModelRegistry;

  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: [model('sig'), model('sigkilled')].join('\n') }));
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    reg = new SqliteModelRegistry(registryPath(env.config));
  });
  after(async () => {
    await reg?.close();
    for (const id of ['serving-sig', 'serving-sigkilled']) await env?.client.workflow.getHandle(id).terminate('test over').catch(() => undefined);
    if (env) await killAllStarted(env);
    await env?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A receiver: a running workflow whose history keeps every signal (no worker polls its queue). */
  const startReceiver = (workflowId: string) => env.client.workflow.start('servingReceiver', { taskQueue: idle, workflowId });
  const received = async (workflowId: string, runId?: string): Promise<PromotionSignal[]> => {
    const events = (await env.client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? [];
    return events
      .map((e) => e.workflowExecutionSignaledEventAttributes)
      .filter((a) => a?.signalName === SIGNAL)
      .map((a) => defaultPayloadConverter.fromPayload<PromotionSignal>(a!.input!.payloads![0]!));
  };
  const train = async (name: string, params: Record<string, unknown>) => (await (await env.submit(name, { params })).result()) as JobSummary;

  test('two promotions and a rollback: exactly three signals with the right versions; a resent change is dropped', async () => {
    const receiver = await startReceiver('serving-sig');
    const first = await train('sig', WEAK);
    assert.deepEqual([first.registry.version, first.registry.stage], [1, 'production']);
    assert.match(first.registry.decision ?? '', /; onPromote signal kiln\.promoted to workflow serving-sig for sig v1 \(change \d+\) sent$/);
    const second = await train('sig', STRONG);
    assert.deepEqual([second.registry.version, second.registry.stage], [2, 'production'], second.registry.decision ?? '');
    const back = await runKiln(env, ['models', 'rollback', 'sig', '--reason', 'v2 regressed', '--json']);
    assert.equal(back.code, 0, back.stderr);
    assert.match(JSON.parse(back.stdout).onPromote, /^onPromote signal kiln\.promoted to workflow serving-sig for sig v1 \(change \d+\) sent$/);

    const got = await received('serving-sig');
    assert.deepEqual(got.map((s) => [s.model, s.version, s.stage]), [['sig', 1, 'production'], ['sig', 2, 'production'], ['sig', 1, 'production']]);
    assert.equal(new Set(got.map((s) => s.changeId)).size, 3, 'one stage-change id per signal');
    assert.equal(got[0]!.uri, `file://${(await reg.get('sig', 1))!.artifactPath}`);
    assert.equal(got[1]!.uri, `file://${(await reg.get('sig', 2))!.artifactPath}`);

    // A retry after a kill between the send and the registry record sends the same change again:
    // the server drops it (same request id, same run).
    const change = (await reg.productionChange('sig', 1))!;
    assert.equal(change.id, got[2]!.changeId);
    await sendPromotionSignal(env.client, { workflowId: 'serving-sig', name: SIGNAL }, change, (await reg.get('sig', 1))!);
    // Repeating a promote of the production version changes nothing and signals nothing.
    const again = await runKiln(env, ['models', 'promote', 'sig', '1', '--reason', 'again', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(JSON.parse(again.stdout).onPromote, /already ran/);
    assert.equal((await received('serving-sig')).length, 3, 'still three signals');
    assert.equal((await receiver.describe()).status.name, 'RUNNING');
  });

  test('no running receiver: the CLI exits 1 naming it, the change stands; a rerun signals the new receiver once', async () => {
    await env.client.workflow.getHandle('serving-sig').terminate('receiver restarts');
    const r = await runKiln(env, ['models', 'promote', 'sig', '2', '--reason', 'v2 after all']);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /onPromote signal kiln\.promoted to workflow serving-sig for sig v2 \(change \d+\) failed: no running workflow serving-sig in this namespace \(start the receiver, or fix promotion\.onPromote\.signal\.workflowId\); the promotion stands, the signal is retried/);
    assert.match(r.stderr, /retry it with: kiln models promote sig 2 --reason "rerun onPromote"/);
    assert.equal((await reg.get('sig', 2))!.stage, 'production', 'the promotion stands');
    const fresh = await startReceiver('serving-sig');
    const rerun = await runKiln(env, ['models', 'promote', 'sig', '2', '--reason', 'rerun onPromote', '--json']);
    assert.equal(rerun.code, 0, rerun.stderr);
    assert.match(JSON.parse(rerun.stdout).onPromote, /sent$/);
    const got = await received('serving-sig', fresh.firstExecutionRunId);
    assert.deepEqual(got.map((s) => [s.version, s.changeId]), [[2, (await reg.productionChange('sig', 2))!.id]]);
  });

  test('control worker SIGKILLed in registration after the signal: the retried activity does not signal again', async () => {
    await startReceiver('serving-sigkilled');
    const queue = `kiln-control-signal-${Date.now()}`;
    const marker = path.join(env.home, 'register-held-signal.json');
    const first = await startControlWorkerProcess(env, { taskQueue: queue, holdRegisterFile: marker });
    const h = await submitJob(env.client, env.config, buildSpec(env.config, 'sigkilled', { params: WEAK }), { taskQueue: queue });
    await waitFor(() => fs.existsSync(marker), 60_000, 'registerVersion to promote, signal and hold');
    assert.equal((await received('serving-sigkilled')).length, 1, 'signalled before the kill');
    first.kill('SIGKILL');
    await first.exited;
    const second = await startControlWorkerProcess(env, { taskQueue: queue });
    const s = (await h.result()) as JobSummary;
    assert.deepEqual([s.registry.version, s.registry.stage], [1, 'production']);
    assert.match(s.registry.decision ?? '', /onPromote for sigkilled v1 \(change \d+\) already ran/);
    assert.deepEqual((await received('serving-sigkilled')).map((x) => [x.model, x.version]), [['sigkilled', 1]], 'the retried activity did not signal again');
    second.kill('SIGTERM');
    await second.exited;
  });

  test('bad onPromote shapes are config errors naming the field and the accepted forms', () => {
    const cfg = (onPromote: string) => defaultConfigYaml({ models: model('sig').replace(/onPromote: .*\} \} \}$/, `onPromote: ${onPromote} }`) });
    const refuse = (onPromote: string, re: RegExp) => assert.throws(() => parseConfigText(cfg(onPromote), path.join(dir, 'temporal.yaml'), { KILN_HOME: dir }), (e: Error) => (assert.match(e.message, re), true));
    assert.doesNotThrow(() => parseConfigText(cfg('{ signal: { workflowId: w, name: n } }'), path.join(dir, 'temporal.yaml'), { KILN_HOME: dir }));
    refuse('reload.sh', /models\.sig\.promotion\.onPromote: onPromote is either an argv list, .* or \{ signal: \{ workflowId: serving-spirals, name: kiln\.promoted \} \}/);
    refuse('{ signal: { workflowId: w } }', /models\.sig\.promotion\.onPromote\.signal\.name: required: the signal name the workflow handles/);
    refuse('{ signal: { workflowId: "", name: n } }', /models\.sig\.promotion\.onPromote\.signal\.workflowId: must not be empty/);
    refuse('{ signal: { workflowId: w, name: n, namespace: x } }', /onPromote\.signal: unknown key\(s\) namespace: signal takes only workflowId and name/);
    refuse('{ signl: { workflowId: w, name: n } }', /onPromote: unknown key\(s\) signl/);
  });
});
