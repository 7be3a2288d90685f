/**
 * Trainer commands checked before a job runs, and config drift between workers and clients, with
 * real processes: `kiln config check` and a GPU worker on configs with a missing script, a missing
 * binary and a non-executable file; a job whose trainer vanished after the worker started (spawn
 * ENOENT → TrainerNotFound, one attempt); a config edited under running workers (WorkerConfigMismatch,
 * seen in `kiln status` and `kiln doctor`); the shipped temporal.yaml copied outside the repo.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import type { JobSummary } from '../src/shared/summary';
import { parseConfigText } from '../src/config/load';
import { watchConfig } from '../src/dev/configWatch';
import { commandProblem } from '../src/supervisor/commandCheck';
import { sdkLevel } from '../workers/runtime';
import { PROMOTED_SPIRALS_MODEL } from './helpers/fixtures';
import { defaultConfigYaml, KILN_BIN, REPO, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function kiln(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const child = spawn(process.execPath, [KILN_BIN, ...args], { env: { ...process.env, KILN_LOG_PRETTY: '0', KILN_CONFIG: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

/** A model `broken` on trainer `broken` with this command, next to the working spirals model. */
function brokenConfig(command: string): string {
  return defaultConfigYaml({
    trainers: `  broken:\n    command: ${command}\n`,
    models: `${PROMOTED_SPIRALS_MODEL}\n  broken:\n    trainer: broken\n    dataset: synthetic://x/v1\n    pool: gpu\n`,
  });
}

const tmpDirs: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-preflight-'));
  tmpDirs.push(d);
  return d;
}

after(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('preflight of trainer commands', () => {
  let dir: string;
  before(() => {
    dir = tmp();
    fs.writeFileSync(path.join(dir, 'noexec.sh'), '#!/bin/sh\nexit 0\n', { mode: 0o644 });
  });

  const cases = [
    { what: 'a missing script', command: '[python3, ./no-such-train.py]', why: /script \.\/no-such-train\.py not found \(looked at .*no-such-train\.py\)/ },
    { what: 'a missing binary', command: '[kiln-no-such-binary, --flag]', why: /executable kiln-no-such-binary not found on PATH/ },
    { what: 'a non-executable file', command: '[./noexec.sh]', why: /\.\/noexec\.sh is not executable .*chmod \+x/ },
  ];
  for (const c of cases) {
    test(`${c.what}: kiln config check exits 1 naming the model and command; a GPU worker refuses to start`, async () => {
      const file = path.join(dir, `${c.what.replaceAll(' ', '-')}.yaml`);
      fs.writeFileSync(file, brokenConfig(c.command));
      const r = await kiln(['--config', file, 'config', 'check'], { KILN_HOME: path.join(dir, 'state') });
      assert.equal(r.code, 1, `config check: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, new RegExp(`model\\(s\\) broken: trainers\\.broken\\.command \`${c.command.slice(1, -1).replace(', ', ' ').replace(/[.+]/g, '\\$&')}\` cannot start: `));
      assert.match(r.stderr, c.why);
      assert.doesNotMatch(r.stderr, /model\(s\) spirals/, 'the working model is not blamed');
      const json = JSON.parse((await kiln(['--config', file, 'config', 'check', '--json'], { KILN_HOME: path.join(dir, 'state') })).stdout) as { ok: boolean; problems: string[] };
      assert.equal(json.ok, false);
      assert.equal(json.problems.length, 1);
      // No server is needed for the refusal: the worker checks before it connects.
      const w = await kiln(['--config', file, 'worker', 'gpu', '--pool', 'gpu'], { KILN_HOME: path.join(dir, 'state'), TEMPORAL_ADDRESS: '127.0.0.1:1', KILN_METRICS_PORT: '0' });
      assert.equal(w.code, 1);
      assert.match(w.stderr, /GPU worker for pool gpu refuses to start: 1 trainer command\(s\) in .* cannot start on this host/);
      assert.match(w.stderr, c.why);
    });
  }

  test('commandProblem: PATH lookup, -c programs are not files, a found script passes', () => {
    assert.equal(commandProblem(['sh', '-c', 'exit 0'], dir), null);
    assert.equal(commandProblem([process.execPath, path.join(REPO, 'examples', 'trainer', 'train.mjs')], dir), null);
    assert.match(commandProblem(['sh', 'missing.sh'], dir) ?? '', /script missing\.sh not found/);
    assert.match(commandProblem(['sh'], dir, '') ?? '', /PATH is empty/);
  });

  test('the shipped temporal.yaml copied outside the repo still finds ./examples/... (config folder, then Kiln install folder)', async () => {
    const out = tmp();
    fs.copyFileSync(path.join(REPO, 'temporal.yaml'), path.join(out, 'temporal.yaml'));
    const r = await kiln(['--config', path.join(out, 'temporal.yaml'), 'config', 'check', '--json'], { KILN_HOME: path.join(out, 'state') });
    const j = JSON.parse(r.stdout) as { ok: boolean; problems: string[] };
    assert.deepEqual(j.problems, []);
    assert.equal(j.ok, true);
    assert.equal(r.code, 0);
  });
});

describe('trainer gone after the worker started; config drift', () => {
  let env: KilnTestEnv;
  let script: string;
  before(async () => {
    const dir = tmp();
    script = path.join(dir, 'vanishing.sh');
    fs.writeFileSync(script, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    env = await startKilnEnv(brokenConfig(`[${script}]`));
    await env.startControlWorker();
    await env.startGpuWorker({ slots: 2 });
  });
  after(async () => {
    await env?.cleanup();
  });

  test('a GPU worker at info level logs Kiln\'s lines, not the SDK\'s chatter', () => {
    const text = fs.readFileSync(path.join(env.home, 'worker-gpu-0.log'), 'utf8');
    assert.match(text, /"msg":"worker started"/);
    assert.doesNotMatch(text, /No workflows registered|Worker state changed/);
  });

  test('spawn ENOENT fails the job once, non-retryably, as TrainerNotFound', async () => {
    fs.rmSync(script);
    const h = await env.submit('broken');
    const err = await h.result().then(
      () => assert.fail('expected a failure'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError);
    const hist = await h.fetchHistory();
    const started = hist.events?.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train') ?? [];
    assert.equal(started.length, 1, 'one train attempt, no retry');
    const failed = hist.events?.find((e) => e.activityTaskFailedEventAttributes)?.activityTaskFailedEventAttributes?.failure;
    assert.equal(failed?.applicationFailureInfo?.type ?? failed?.cause?.applicationFailureInfo?.type, 'TrainerNotFound');
    assert.match(failed?.message ?? '', new RegExp(`trainer not found: cannot start trainer "${script.replace(/[.]/g, '\\.')}": executable .* not found`));
    const s = (await h.describe()).memo as { summary: JobSummary };
    assert.equal(s.summary.session_info.attempts, 1);
  });

  test('drift: the config edited under running workers → the job is refused with WorkerConfigMismatch, in kiln status and kiln doctor', async () => {
    fs.writeFileSync(script, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const cli = { KILN_HOME: env.home, TEMPORAL_ADDRESS: env.address };
    const before = JSON.parse((await kiln(['--config', env.configFile, 'doctor', '--json', '--control-queue', env.controlQueue], cli)).stdout) as { checks: Array<{ id: string; status: string; detail: string }> };
    const drift0 = before.checks.find((c) => c.id === 'config-drift')!;
    assert.equal(drift0.status, 'ok', drift0.detail);
    assert.match(drift0.detail, /2 live worker\(s\) run .* as it is on disk/, 'the control worker (one identity on two task types) and the GPU worker');

    const workerHash = env.config.hash;
    const workerJobHash = env.config.jobHashes.spirals!;
    // A host-specific section may differ without refusing anything: the job hash covers the model's part.
    const hostOnly = fs.readFileSync(env.configFile, 'utf8').replace('progressInterval: 1s', 'progressInterval: 2s');
    assert.notEqual(parseConfigText(hostOnly, env.configFile, { KILN_HOME: env.home }).hash, workerHash);
    assert.equal(parseConfigText(hostOnly, env.configFile, { KILN_HOME: env.home }).jobHashes.spirals, workerJobHash);
    const edited = hostOnly.replace(/(\n  spirals:\n)/, '$1    description: edited under running workers\n');
    env.writeConfig(edited);
    assert.notEqual(env.config.hash, workerHash);
    assert.notEqual(env.config.jobHashes.spirals, workerJobHash, 'the model section changed');
    const h = await env.submit('spirals', { params: { epochs: 1, steps_per_epoch: 5 } });
    await assert.rejects(h.result(), WorkflowFailedError);
    const hist = await h.fetchHistory();
    assert.equal(hist.events?.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'train').length, 0, 'refused before any GPU work');
    const failure = hist.events?.find((e) => e.activityTaskFailedEventAttributes)?.activityTaskFailedEventAttributes?.failure;
    assert.equal(failure?.applicationFailureInfo?.type, 'WorkerConfigMismatch');

    const status = await kiln(['--config', env.configFile, 'status', h.workflowId], cli);
    assert.match(status.stdout, new RegExp(`worker config mismatch: worker .*:control runs .* where model spirals .* has config hash ${workerJobHash}, but job ${h.workflowId} was validated against config hash ${env.config.jobHashes.spirals}`));

    const doctor = JSON.parse((await kiln(['--config', env.configFile, 'doctor', '--json', '--control-queue', env.controlQueue], cli)).stdout) as typeof before;
    const drift = doctor.checks.find((c) => c.id === 'config-drift')!;
    assert.equal(drift.status, 'warn');
    assert.match(drift.detail, new RegExp(`on disk is config ${env.config.hash}, but .*:control on ${env.controlQueue} runs config ${workerHash}, .*:\\d+:gpu-gpu on kiln-gpu-gpu runs config ${workerHash}: jobs of a model whose models:/trainers: entry, retention or timeouts changed are refused by them \\(WorkerConfigMismatch\\)`));
    const human = await kiln(['--config', env.configFile, 'doctor', '--control-queue', env.controlQueue], cli);
    assert.match(human.stdout, /\[warn\] workers run the config on disk/);
    assert.match(human.stdout, /fix: restart those workers/);
  });
});

describe('kiln dev notices a changed temporal.yaml; SDK chatter is debug', () => {
  test('watchConfig: an edit is reported with both hashes and how to apply it; an undo is reported too', async () => {
    const dir = tmp();
    const file = path.join(dir, 'temporal.yaml');
    const yaml = defaultConfigYaml();
    fs.writeFileSync(file, yaml);
    const config = parseConfigText(yaml, file, { KILN_HOME: dir });
    const said: Array<{ level: string; msg: string }> = [];
    const log = { warn: (_o: object, msg: string) => said.push({ level: 'warn', msg }), info: (_o: object, msg: string) => said.push({ level: 'info', msg }) };
    const stop = watchConfig(config, log as never, 50);
    try {
      // fs.watchFile takes its baseline stat asynchronously: an edit before it would be the baseline.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(said.length, 0, 'nothing to say while the file is as loaded');
      fs.writeFileSync(file, yaml.replace('progressInterval: 1s', 'progressInterval: 3s'));
      const changed = await waitFor(() => said.find((m) => m.level === 'warn'), 10_000, 'the change reported');
      assert.match(changed.msg, new RegExp(`changed \\(config ${config.hash} → [0-9a-f]{12}\\): the workers still run ${config.hash} and refuse jobs .*WorkerConfigMismatch.*stop kiln dev \\(Ctrl-C\\) and start it again`));
      fs.writeFileSync(file, `${yaml}# a comment changes nothing\n`);
      const back = await waitFor(() => said.find((m) => m.level === 'info'), 10_000, 'the undo reported');
      assert.match(back.msg, new RegExp(`is back to config ${config.hash}, the one the workers run`));
    } finally {
      stop();
    }
  });

  test('SDK chatter goes to debug; SDK warnings and errors stay', () => {
    assert.equal(sdkLevel('WARN', 'No workflows registered, not polling for workflow tasks'), 'debug');
    assert.equal(sdkLevel('INFO', 'Worker state changed'), 'debug');
    assert.equal(sdkLevel('WARN', 'Activity failed'), 'warn');
    assert.equal(sdkLevel('ERROR', 'Worker failed'), 'error');
  });
});

