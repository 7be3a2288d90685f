/**
 * Consumers learn of a promotion once, on a real dev server with real trainer processes:
 * promotion.onPromote (an argv the control worker or the CLI runs per production change, recorded in
 * the registry) and `kiln models watch --exec` (a real child process) for two promotions and a
 * rollback; a failing hook retried by the activity; the control worker SIGKILLed inside registration
 * after the hook ran, and the retried activity not running it again.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { JobSummary } from '../src/shared/summary';
import { submitJob } from '../src/client/jobs';
import { buildSpec } from '../src/config/spec';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { registryPath } from '../src/registry/open';
import { isAlive } from '../src/supervisor/proc';
import { defaultConfigYaml, KILN_BIN, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';
import { childEnv, killAllStarted, runKiln, startControlWorkerProcess } from './helpers/processes';

const WEAK = { epochs: 1, steps_per_epoch: 3, lr: 0.01 };
const STRONG = { epochs: 4, steps_per_epoch: 25, lr: 0.3 };

/** Appends one JSON line with the env it got; with a marker argument, fails (exit 3) the first time. */
const HOOK = `import fs from 'node:fs';
const [log, marker] = process.argv.slice(2);
if (marker && !fs.existsSync(marker)) { fs.writeFileSync(marker, 'x'); console.error('reload endpoint not ready'); process.exit(3); }
const e = process.env;
fs.appendFileSync(log, JSON.stringify({ model: e.KILN_MODEL, version: Number(e.KILN_VERSION), uri: e.KILN_MODEL_URI, stage: e.KILN_STAGE, change: Number(e.KILN_STAGE_CHANGE_ID) }) + '\\n');
`;

interface HookLine {
  model: string;
  version: number;
  uri: string;
  stage: string;
  change: number;
}

const readLines = (file: string): HookLine[] => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as HookLine) : []);

describe('consumers: onPromote and kiln models watch', { concurrency: 1 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-consumers-'));
  const hook = path.join(dir, 'hook.mjs');
  const log = (name: string) => path.join(dir, `${name}.log`);
  const model = (name: string, onPromote: string[]) => `  ${name}:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
    requiredMetrics: [val_loss, accuracy]
    promotion: { metric: val_loss, direction: min, mode: auto, onPromote: ${JSON.stringify(onPromote)} }`;
  let env: KilnTestEnv;
  let reg: SqliteModelRegistry;

  before(async () => {
    fs.writeFileSync(hook, HOOK);
    const models = [
      model('served', ['node', hook, log('served')]),
      model('flaky', ['node', hook, log('flaky'), path.join(dir, 'flaky.marker')]),
      model('killed', ['node', hook, log('killed')]),
    ].join('\n');
    env = await startKilnEnv(defaultConfigYaml({ models }));
    await env.startControlWorker();
    await env.startGpuWorker({ pool: 'gpu', slots: 2 });
    reg = new SqliteModelRegistry(registryPath(env.config));
  });
  after(async () => {
    await reg?.close();
    if (env) await killAllStarted(env);
    await env?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const train = async (name: string, params: Record<string, unknown>) => (await (await env.submit(name, { params })).result()) as JobSummary;

  test('two promotions and a rollback: onPromote ran three times, watch --exec printed and ran once per change', async () => {
    const watch = spawn(process.execPath, [KILN_BIN, 'models', 'watch', 'served', '--json', '--interval', '200ms', '--exec', process.execPath, hook, log('watch')], {
      env: childEnv(env, { KILN_LOG_LEVEL: 'warn' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    watch.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    watch.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => watch.once('exit', (code) => resolve(code)));
    const events = () => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; version: number | null; previous: number | null; uri: string | null; changeId: number | null });
    try {
      await waitFor(() => events().length >= 1, 20_000, `watch to print the current version (stderr: ${stderr})`);
      assert.deepEqual(events()[0], { event: 'current', model: 'served', version: null, previous: null, uri: null, changeId: null, at: null });

      const first = await train('served', WEAK);
      assert.deepEqual([first.registry.version, first.registry.stage], [1, 'production']);
      assert.match(first.registry.decision ?? '', /; onPromote ran for served v1 \(change \d+\)$/);
      const second = await train('served', STRONG);
      assert.deepEqual([second.registry.version, second.registry.stage], [2, 'production'], second.registry.decision ?? '');
      const back = await runKiln(env, ['models', 'rollback', 'served', '--reason', 'v2 regressed', '--json']);
      assert.equal(back.code, 0, back.stderr);
      assert.match(JSON.parse(back.stdout).onPromote, /^onPromote ran for served v1 \(change \d+\)$/);

      const hooks = readLines(log('served'));
      assert.deepEqual(hooks.map((h) => [h.model, h.version, h.stage]), [['served', 1, 'production'], ['served', 2, 'production'], ['served', 1, 'production']]);
      assert.equal(new Set(hooks.map((h) => h.change)).size, 3, 'one stage-change id per run');
      assert.equal(hooks[0]!.uri, `file://${(await reg.get('served', 1))!.artifactPath}`);

      await waitFor(() => events().length >= 4 && readLines(log('watch')).length >= 3, 20_000, `watch to report three changes (stdout: ${stdout})`);
      assert.deepEqual(events().slice(1).map((e) => [e.event, e.previous, e.version, e.changeId]), hooks.map((h, i) => ['change', i === 0 ? null : hooks[i - 1]!.version, h.version, h.change]));
      assert.deepEqual(readLines(log('watch')), hooks, '--exec ran once per change with the same env as onPromote');

      // Repeating a promote of the production version changes nothing and runs no hook again.
      const again = await runKiln(env, ['models', 'promote', 'served', '1', '--reason', 'again', '--json']);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(JSON.parse(again.stdout).changed, false);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(readLines(log('served')).length, 3);
      assert.equal(events().length, 4, 'no change, no line');
    } finally {
      watch.kill('SIGTERM');
    }
    assert.equal(await exited, 0, `watch exits cleanly on SIGTERM (stderr: ${stderr})`);
    assert.equal(isAlive(watch.pid!), false);
  });

  test('a failing onPromote is retried by the activity, logged in the attempt, and the version is promoted once', async () => {
    const h = await env.submit('flaky', { params: WEAK });
    const s = (await h.result()) as JobSummary;
    assert.deepEqual([s.registry.version, s.registry.stage], [1, 'production']);
    assert.equal(readLines(log('flaky')).length, 1);
    const events = (await h.fetchHistory()).events ?? [];
    const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'registerVersion')!;
    const started = events.find((e) => Number(e.activityTaskStartedEventAttributes?.scheduledEventId) === Number(scheduled.eventId))!;
    assert.equal(started.activityTaskStartedEventAttributes!.attempt, 2);
    assert.match(started.activityTaskStartedEventAttributes!.lastFailure?.message ?? '', /onPromote hook for flaky v1 \(change \d+\) failed: .*exit 3: reload endpoint not ready; the promotion stands, the hook is retried/);
    assert.deepEqual((await reg.get('flaky', 1))!.decisions.map((d) => d.kind), ['promoted']);
  });

  test('control worker SIGKILLed in registration after the hook ran: the retried activity does not run it again', async () => {
    const queue = `kiln-control-hook-${Date.now()}`;
    const marker = path.join(env.home, 'register-held.json');
    const first = await startControlWorkerProcess(env, { taskQueue: queue, holdRegisterFile: marker });
    const h = await submitJob(env.client, env.config, buildSpec(env.config, 'killed', { params: WEAK }), { taskQueue: queue });
    await waitFor(() => fs.existsSync(marker), 60_000, 'registerVersion to promote, run the hook and hold');
    assert.equal(readLines(log('killed')).length, 1, 'the hook ran before the kill');
    first.kill('SIGKILL');
    await first.exited;
    const second = await startControlWorkerProcess(env, { taskQueue: queue });
    const s = (await h.result()) as JobSummary;
    assert.deepEqual([s.registry.version, s.registry.stage], [1, 'production']);
    assert.match(s.registry.decision ?? '', /onPromote for killed v1 \(change \d+\) already ran/);
    assert.equal(readLines(log('killed')).length, 1, 'the retried activity did not run the hook again');
    assert.deepEqual((await reg.get('killed', 1))!.decisions.map((d) => d.kind), ['promoted']);
    second.kill('SIGTERM');
    await second.exited;
  });
});
