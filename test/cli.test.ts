/**
 * The `kiln` CLI as operators run it: real child processes (`node bin/kiln --config <file> <verb>`)
 * against a real dev server, a control worker on kiln-control (what `kiln submit` targets) and a GPU
 * worker process. Output is read through --json; the human output is checked where it matters
 * (watch's plain lines, doctor's fix hints, status's source line).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WorkflowNotFoundError } from '@temporalio/client';
import { TASK_QUEUE_CONTROL } from '../src/shared/messages';
import { createLogger } from '../src/logger';
import { freePort } from '../src/temporal/devServer';
import { createControlWorker } from '../workers/control';
import { BLOBS_MODEL, PROMOTED_SPIRALS_MODEL } from './helpers/fixtures';
import { defaultConfigYaml, KILN_BIN, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const MODELS = [PROMOTED_SPIRALS_MODEL, BLOBS_MODEL].join('\n');

/** A job that trains long enough to be looked at, paused and cancelled (~100 s if left alone). */
const LONG = ['--param', 'epochs=100', '--param', 'step_delay_ms=100'];

describe('kiln CLI', () => {
  let env: KilnTestEnv;
  let gpu: GpuWorkerProc;
  let control: { stop(): Promise<void> } | undefined;
  const children = new Set<ChildProcess>();

  async function startControl(): Promise<{ stop(): Promise<void> }> {
    const log = createLogger({ name: 'cli-test-control', level: process.env.KILN_TEST_LOG ?? 'warn', pretty: false });
    const w = await createControlWorker({ config: env.config, log, taskQueue: TASK_QUEUE_CONTROL });
    const running = w.worker.run().finally(() => w.close());
    let stopped = false;
    return {
      stop: async () => {
        if (!stopped) {
          stopped = true;
          w.worker.shutdown();
        }
        await running;
      },
    };
  }

  function start(args: string[], o: { env?: NodeJS.ProcessEnv; config?: string } = {}): { child: ChildProcess; done: Promise<Run> } {
    const child = spawn(process.execPath, [KILN_BIN, '--config', o.config ?? env.configFile, ...args], {
      env: { ...process.env, KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address, KILN_LOG_PRETTY: '0', KILN_CONFIG: '', ...o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const done = new Promise<Run>((resolve) =>
      child.once('close', (code) => {
        children.delete(child);
        resolve({ code, stdout, stderr });
      }),
    );
    return { child, done };
  }

  async function kiln(args: string[], o: { env?: NodeJS.ProcessEnv; config?: string; timeoutMs?: number } = {}): Promise<Run> {
    const { child, done } = start(args, o);
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 120_000);
    const r = await done;
    clearTimeout(timer);
    return r;
  }

  /** Runs a verb with --json, asserts exit 0, parses stdout. */
  async function kilnJson<T = Record<string, unknown>>(args: string[], o: { env?: NodeJS.ProcessEnv; config?: string } = {}): Promise<T> {
    const r = await kiln([...args, '--json'], o);
    assert.equal(r.code, 0, `kiln ${args.join(' ')} --json exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  async function submitLong(): Promise<string> {
    const s = await kilnJson<{ jobId: string }>(['submit', 'spirals', ...LONG]);
    await waitFor(
      async () => {
        const st = await kilnJson<{ phase: string; progress: { step: number } | null }>(['status', s.jobId]);
        return st.phase === 'training' && (st.progress?.step ?? 0) > 0;
      },
      60_000,
      `${s.jobId} training`,
      300,
    );
    return s.jobId;
  }

  async function workflowExists(id: string): Promise<boolean> {
    try {
      await env.client.workflow.getHandle(id).describe();
      return true;
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return false;
      throw err;
    }
  }

  async function visibleCount(query: string): Promise<number> {
    return (await env.client.workflow.count(query)).count;
  }

  before(async () => {
    env = await startKilnEnv(defaultConfigYaml({ models: MODELS }));
    control = await startControl();
    gpu = await env.startGpuWorker({ pool: 'gpu', slots: 2 });
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await control?.stop();
    await env?.cleanup();
  });

  test('every verb has --help with examples (exit 0)', async () => {
    for (const verb of ['submit', 'status', 'watch', 'list', 'cancel', 'pause', 'resume', 'retry', 'logs', 'doctor']) {
      const r = await kiln([verb, '--help']);
      assert.equal(r.code, 0, `${verb} --help: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`kiln ${verb}`), `${verb} --help shows usage`);
      assert.match(r.stdout, /Example/, `${verb} --help has examples`);
    }
    const top = await kiln(['--help']);
    assert.equal(top.code, 0);
    assert.match(top.stdout, /doctor/);
  });

  test('submit rejects bad input with a clear error, a non-zero exit and no workflow started', async () => {
    const before = await visibleCount('WorkflowType = "TrainingJob"');
    const cases: Array<{ args: string[]; code: number; error: RegExp }> = [
      { args: ['submit', 'nope', '--id', 'cli-bad-model'], code: 1, error: /unknown model "nope".*spirals, blobs/ },
      { args: ['submit', 'spirals', '--id', 'cli-bad-range', '--param', 'epochs=0'], code: 1, error: /params\.epochs: Too small/ },
      { args: ['submit', 'spirals', '--id', 'cli-bad-lr', '--param', 'lr=11'], code: 1, error: /params\.lr: Too big/ },
      { args: ['submit', 'spirals', '--id', 'cli-bad-undeclared', '--param', 'bogus=1'], code: 1, error: /declares no param "bogus" \(declared: epochs, /},
      { args: ['submit', 'spirals', '--id', 'cli-bad-noeq', '--param', 'lr'], code: 2, error: /--param takes key=value, got "lr"/ },
      { args: ['submit', 'spirals', '--id', 'cli-bad-type', '--param', 'epochs=many'], code: 1, error: /params\.epochs/ },
    ];
    for (const c of cases) {
      const r = await kiln([...c.args, '--json']);
      assert.equal(r.code, c.code, `${c.args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
      assert.match(r.stderr, c.error, `${c.args.join(' ')}: stderr ${r.stderr}`);
      assert.equal(r.stdout, '', 'nothing on stdout: no job id for a script to pick up');
      const id = c.args[c.args.indexOf('--id') + 1]!;
      assert.equal(await workflowExists(id), false, `no workflow ${id} was started`);
      assert.equal(await visibleCount(`WorkflowId = "${id}"`), 0, `visibility has no ${id}`);
    }
    assert.equal(await visibleCount('WorkflowType = "TrainingJob"'), before, 'no TrainingJob was started by any bad submit');
  });

  test('submit --watch (non-TTY) prints plain lines and exits 0 on completion; list filters by model and phase', async () => {
    const r = await kiln(['submit', 'spirals', '--param', 'epochs=3', '--param', 'step_delay_ms=60', '--watch']);
    assert.equal(r.code, 0, `submit --watch: ${r.stderr}\n${r.stdout}`);
    const lines = r.stdout.trim().split('\n');
    const jobId = lines[0]!;
    assert.match(jobId, /^train-spirals-[a-z0-9]{6}$/);
    assert.ok(!r.stdout.includes('\r') && !r.stdout.includes('\x1b'), 'no carriage returns or escape codes when stdout is not a TTY');
    assert.ok(lines.some((l) => l.startsWith(`${jobId} completed`)), `a completed line:\n${r.stdout}`);
    assert.match(r.stdout, /outcome: {4}completed; steps 30/);
    assert.equal(new Set(lines).size, lines.length, 'each line is printed once (only changes)');

    const blobs = await kilnJson<{ jobId: string }>(['submit', 'blobs']);
    await waitFor(async () => (await kilnJson<Array<{ jobId: string }>>(['list', '--model', 'blobs', '--phase', 'completed'])).some((x) => x.jobId === blobs.jobId), 60_000, 'blobs job completed in visibility', 300);

    const all = await kilnJson<Array<{ jobId: string; model: string; phase: string; trigger: string; status: string }>>(['list']);
    assert.ok(all.some((x) => x.jobId === jobId) && all.some((x) => x.jobId === blobs.jobId));
    const spirals = await kilnJson<Array<{ jobId: string; model: string }>>(['list', '--model', 'spirals']);
    assert.ok(spirals.length > 0 && spirals.every((x) => x.model === 'spirals'), 'only spirals jobs');
    assert.ok(spirals.some((x) => x.jobId === jobId) && !spirals.some((x) => x.jobId === blobs.jobId));
    const completedBlobs = await kilnJson<Array<{ jobId: string; phase: string; trigger: string; status: string }>>(['list', '--model', 'blobs', '--phase', 'completed', '--since', '1h']);
    assert.deepEqual(completedBlobs.map((x) => x.jobId), [blobs.jobId]);
    assert.equal(completedBlobs[0]!.trigger, 'manual');
    assert.equal(completedBlobs[0]!.status, 'COMPLETED');
    assert.deepEqual(await kilnJson(['list', '--model', 'blobs', '--phase', 'training']), []);

    const human = await kiln(['list', '--model', 'blobs']);
    assert.equal(human.code, 0);
    assert.match(human.stdout, /^JOB +MODEL +PHASE +TRIGGER +STATUS +STARTED/);
    assert.match(human.stdout, new RegExp(`${blobs.jobId} +blobs +completed +manual +COMPLETED`));
    const bad = await kiln(['list', '--phase', 'sleeping']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown phase "sleeping" \(phases: queued, /);

    // watch on a finished job: the outcome as exit code, in --json too.
    const w = await kiln(['watch', jobId, '--json']);
    assert.equal(w.code, 0);
    const last = JSON.parse(w.stdout.trim().split('\n').pop()!) as { outcome: string; exitCode: number };
    assert.deepEqual([last.outcome, last.exitCode], ['completed', 0]);
  });

  test('status: from the progress query, and from describe + heartbeat when no control worker answers', async () => {
    const jobId = await submitLong();
    const q = await kilnJson<{ source: string; phase: string; model: string; progress: { step: number; attempt: number; workerId: string; totalSteps: number; line: string }; pendingActivity: { type: string } }>(['status', jobId]);
    assert.equal(q.source, 'query');
    assert.equal(q.phase, 'training');
    assert.equal(q.model, 'spirals');
    assert.equal(q.progress.attempt, 1);
    assert.match(q.progress.workerId, /:gpu-gpu$/);
    assert.equal(q.progress.totalSteps, 1000);
    assert.match(q.progress.line, /^epoch \d+\/100 · step \d+\/1000/);
    assert.equal(q.pendingActivity.type, 'train');
    const human = await kiln(['status', jobId]);
    assert.match(human.stdout, /training {2}\(model spirals, workflow RUNNING, from the progress query\)/);
    assert.match(human.stdout, /\n  checkpoint: /);

    await control!.stop();
    control = undefined;
    const t0 = Date.now();
    const d = await kilnJson<{
      source: string;
      queryError: string;
      phase: string;
      progress: unknown;
      pendingActivity: { type: string; worker: string; lastHeartbeatAgeSec: number; heartbeat: { step: number; attempt: number; workerId: string; lastCheckpoint: { step: number } | null } };
    }>(['status', jobId]);
    assert.ok(Date.now() - t0 < 30_000, 'the fallback does not hang');
    assert.equal(d.source, 'describe', 'no worker answers the query: describe is used and named');
    assert.ok(d.queryError, 'says why the query was not used');
    assert.equal(d.progress, null);
    assert.equal(d.phase, 'training', 'phase from the KilnPhase search attribute');
    assert.equal(d.pendingActivity.type, 'train');
    assert.match(d.pendingActivity.worker, /:gpu-gpu$/);
    assert.ok(d.pendingActivity.lastHeartbeatAgeSec < 10, `GPU worker still heartbeats (${d.pendingActivity.lastHeartbeatAgeSec} s)`);
    assert.ok(d.pendingActivity.heartbeat.step >= q.progress.step, 'the heartbeat carries the step');
    assert.equal(d.pendingActivity.heartbeat.attempt, 1);
    assert.match(d.pendingActivity.heartbeat.workerId, /:gpu-gpu$/);
    const h2 = await kiln(['status', jobId]);
    assert.equal(h2.code, 0);
    assert.match(h2.stdout, /from describe \+ the last heartbeat: no worker answered the progress query/);
    assert.match(h2.stdout, /heartbeat: {2}step \d+/);

    control = await startControl();
    const c = await kilnJson<{ sent: boolean; status: string; phase: string }>(['cancel', jobId, '--reason', 'status test done', '--wait']);
    assert.deepEqual([c.sent, c.status, c.phase], [true, 'CANCELLED', 'cancelled']);
  });

  test('pause, resume and cancel (Updates the job answers), with its refusals; watch (non-TTY) follows along and exits 3 on cancel', async () => {
    const jobId = await submitLong();
    const watcher = start(['watch', jobId, '--interval', '300']);

    const p = await kilnJson<{ sent: boolean; phase: string }>(['pause', jobId, '--wait']);
    assert.deepEqual([p.sent, p.phase], [true, 'paused']);
    const again = await kiln(['pause', jobId]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, new RegExp(`kiln pause: ${jobId}: the job is already paused \\(phase paused\\); resume it with resume`));
    const ps = await kilnJson<{ phase: string; progress: { line: string; workerId: string | null } }>(['status', jobId]);
    assert.equal(ps.phase, 'paused');
    assert.match(ps.progress.line, /^paused at step \d+/);
    assert.equal(ps.progress.workerId, null, 'a paused job runs on no worker');

    const r = await kilnJson<{ sent: boolean; phase: string }>(['resume', jobId, '--wait']);
    assert.deepEqual([r.sent, r.phase], [true, 'training']);
    const notPaused = await kiln(['resume', jobId]);
    assert.equal(notPaused.code, 1);
    assert.match(notPaused.stderr, /the job is not paused \(phase training\)/);

    const c = await kiln(['cancel', jobId, '--reason', 'cli test']);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`cancel accepted by ${jobId}: cancelling: cli test \\(the trainer checkpoints and stops\\)`));
    const w = await watcher.done;
    assert.equal(w.code, 3, `watch exits 3 on cancel\n${w.stdout}\n${w.stderr}`);
    assert.ok(!w.stdout.includes('\r') && !w.stdout.includes('\x1b'), 'plain lines');
    const lines = w.stdout.trim().split('\n');
    assert.ok(lines.some((l) => new RegExp(`^${jobId} training epoch \\d+/100 · step \\d+/1000 · loss `).test(l)), `progress lines:\n${w.stdout}`);
    assert.ok(lines.some((l) => l.startsWith(`${jobId} paused`)), `the pause shows:\n${w.stdout}`);
    assert.ok(lines.some((l) => l.startsWith(`${jobId} cancelled`)), `the end shows:\n${w.stdout}`);
    assert.match(w.stdout, /reason: {5}cli test/);

    const late = await kiln(['cancel', jobId, '--json']);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /already ended \(cancelled/);
    assert.equal((JSON.parse(late.stdout) as { sent: boolean }).sent, false);
    const missing = await kiln(['status', 'train-spirals-nosuch']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no job train-spirals-nosuch in namespace default/);
  });

  test('logs: the trainer log, -n, --json and --follow until the job ends; worker log lines carry jobId, model, attempt, workerId', async () => {
    const s = await kilnJson<{ jobId: string }>(['submit', 'spirals', '--param', 'epochs=4', '--param', 'step_delay_ms=50']);
    const follow = await kiln(['logs', s.jobId, '--follow']);
    assert.equal(follow.code, 0, follow.stderr);
    assert.match(follow.stdout, /=== kiln: attempt 1 on .*:gpu-gpu/);
    assert.match(follow.stdout, /epoch 4\/4 step 40\/40/);
    assert.match(follow.stdout, /done: 40 steps/);

    const tail = await kiln(['logs', s.jobId, '-n', '2']);
    assert.equal(tail.code, 0);
    const tailLines = tail.stdout.trimEnd().split('\n');
    assert.equal(tailLines.length, 2);
    assert.match(tailLines[1]!, /^done: 40 steps/);
    const js = await kiln(['logs', s.jobId, '--json']);
    assert.equal(js.code, 0);
    const objs = js.stdout.trim().split('\n').map((l) => JSON.parse(l) as { jobId: string; line: string });
    assert.ok(objs.length >= 5 && objs.every((o) => o.jobId === s.jobId && typeof o.line === 'string'));
    const none = await kiln(['logs', 'train-spirals-nolog']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no trainer log for train-spirals-nolog/);

    const lines = fs
      .readFileSync(gpu.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((o) => o.jobId === s.jobId);
    assert.ok(lines.some((o) => o.msg === 'starting trainer'), 'the train activity logged about the job');
    for (const o of lines) {
      assert.equal(o.model, 'spirals', `model on: ${JSON.stringify(o)}`);
      assert.equal(o.attempt, 1, `attempt on: ${JSON.stringify(o)}`);
      assert.match(String(o.workerId), /:gpu-gpu$/, `workerId on: ${JSON.stringify(o)}`);
    }
  });

  test('doctor: all green with workers up; a pool without a worker fails with the fix hint; an unreachable server fails', async () => {
    const ok = await kiln(['doctor', '--json']);
    const report = JSON.parse(ok.stdout) as { ok: boolean; checks: Array<{ id: string; status: string; detail: string; hint?: string }> };
    assert.equal(ok.code, 0, `doctor: ${ok.stdout}`);
    assert.equal(report.ok, true);
    const byId = new Map(report.checks.map((c) => [c.id, c]));
    for (const id of ['config', 'state', 'artifacts', 'slots:gpu', 'server', 'namespace', 'search-attributes', `pollers:${TASK_QUEUE_CONTROL}`, 'pollers:kiln-gpu-gpu']) {
      assert.equal(byId.get(id)?.status, 'ok', `${id}: ${JSON.stringify(byId.get(id))}`);
    }
    assert.match(byId.get(`pollers:${TASK_QUEUE_CONTROL}`)!.detail, /workflow: 1 poller\(s\) .*:control; activity: 1 poller\(s\)/);
    assert.match(byId.get('pollers:kiln-gpu-gpu')!.detail, new RegExp(`activity: 1 poller\\(s\\) .*:${gpu.pid}:gpu-gpu`));
    assert.match(byId.get('slots:gpu')!.detail, /2 slot\(s\) per worker/);
    const human = await kiln(['doctor']);
    assert.equal(human.code, 0);
    assert.match(human.stdout, /all \d+ checks passed/);

    const idleConfig = path.join(env.home, 'idle-pool.yaml');
    fs.writeFileSync(
      idleConfig,
      defaultConfigYaml({ models: MODELS, pools: `    gpu: { devices: auto, slots: 2, metricsPort: 0 }\n    idle: { devices: auto, slots: 1, metricsPort: 0 }` }),
    );
    const bad = await kiln(['doctor', '--json'], { config: idleConfig });
    assert.equal(bad.code, 1, 'a failed check exits 1');
    const br = JSON.parse(bad.stdout) as typeof report;
    assert.equal(br.ok, false);
    const idle = br.checks.find((c) => c.id === 'pollers:kiln-gpu-idle')!;
    assert.equal(idle.status, 'fail');
    assert.match(idle.detail, /activity: no live poller/);
    assert.match(idle.hint!, /no worker polls activity tasks on kiln-gpu-idle: start a worker for the pool on a GPU host: kiln worker gpu --pool idle/);
    assert.equal(br.checks.find((c) => c.id === 'pollers:kiln-gpu-gpu')!.status, 'ok', 'the served pool stays green');
    const badHuman = await kiln(['doctor'], { config: idleConfig });
    assert.equal(badHuman.code, 1);
    assert.match(badHuman.stdout, /\[FAIL\] workers polling kiln-gpu-idle/);
    assert.match(badHuman.stdout, /fix: no worker polls activity tasks on kiln-gpu-idle: .*kiln worker gpu --pool idle/);
    assert.match(badHuman.stdout, /1 check\(s\) failed/);

    const port = await freePort();
    const down = await kiln(['doctor', '--json'], { env: { TEMPORAL_ADDRESS: `127.0.0.1:${port}` } });
    assert.equal(down.code, 1);
    const dr = JSON.parse(down.stdout) as typeof report;
    const server = dr.checks.find((c) => c.id === 'server')!;
    assert.equal(server.status, 'fail');
    assert.match(server.hint!, /server\.address \/ TEMPORAL_ADDRESS/);
    assert.equal(dr.checks.find((c) => c.id === 'config')!.status, 'ok');

    const cfgBroken = path.join(env.home, 'broken.yaml');
    fs.writeFileSync(cfgBroken, 'version: 1\nmodels:\n  m: { trainer: nope, dataset: x }\n');
    const broken = await kiln(['doctor', '--json'], { config: cfgBroken });
    assert.equal(broken.code, 1);
    const cfgCheck = (JSON.parse(broken.stdout) as typeof report).checks.find((c) => c.id === 'config')!;
    assert.equal(cfgCheck.status, 'fail');
    assert.match(cfgCheck.detail, /models\.m\.trainer: unknown trainer "nope"/);
  });
});
