/**
 * Bad input (issue 7): each is refused with an error that names the problem, a non-zero exit, nothing
 * started and nothing stored changed. Config and submit go through the real CLI as a child process;
 * path escapes are checked on disk; a trainer that points Kiln outside its job dir runs for real.
 */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ConfigError, UsageError } from '../src/shared/errors';
import { parseConfigText } from '../src/config/load';
import { parseParamFlags } from '../src/cli/params';
import { submitJob } from '../src/client/jobs';
import { buildSpec, parseSpecJson, validateSpec } from '../src/config/spec';
import { JobSpecSchema, type JobSpec } from '../src/shared/spec';
import { summaryPath, type JobSummary } from '../src/shared/summary';
import { SqliteModelRegistry } from '../src/registry/sqlite';
import { EXAMPLE_TRAINER_PARAMS } from './helpers/fixtures';
import { defaultConfigYaml, EXAMPLE_TRAINER, jobDir, startKilnEnv, type KilnTestEnv } from './helpers/kiln';
import { FIXTURES, readManifest, runKiln } from './helpers/processes';

function writeTmp(dir: string, name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

describe('bad config: kiln config check exits 1 naming the problem by path', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-badcfg-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const good = defaultConfigYaml();

  async function check(name: string, yaml: string): Promise<string> {
    const file = writeTmp(dir, name, yaml);
    const r = await runKiln(null, ['config', 'check', '--config', file], { env: { KILN_HOME: dir } });
    assert.equal(r.code, 1, `exit code for ${name}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, '', 'nothing on stdout');
    return r.stderr;
  }

  test('the good config passes (so the failures below are about the edits)', async () => {
    const r = await runKiln(null, ['config', 'check', '--config', writeTmp(dir, 'good.yaml', good)], { env: { KILN_HOME: dir } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /OK/);
  });

  test('malformed YAML: the syntax error with its line', async () => {
    const err = await check('malformed.yaml', 'version: 1\nmodels:\n  a: [\n    b: c\n');
    assert.match(err, /YAML syntax/);
    assert.match(err, /line \d+/);
  });

  test('wrong types: each named by path', async () => {
    const err = await check('types.yaml', good.replace('maxAttempts: 5', 'maxAttempts: "five"').replace('slots: 2', 'slots: two'));
    assert.match(err, /timeouts\.maxAttempts: .*expected number/);
    assert.match(err, /workers\.pools\.gpu\.slots: .*expected number/);
  });

  test('unknown keys (typos) are errors, not ignored', async () => {
    const err = await check('typo.yaml', `${good}\nretention:\n  keepLatets: 3\ntimeout:\n  heartbeat: 5s\n`);
    assert.match(err, /retention: Unrecognized key: "keepLatets"/);
    assert.match(err, /\(root\): Unrecognized key: "timeout"/);
    const nested = await check('typo2.yaml', good.replace('promotion: { metric: val_loss', 'promotion: { metrc: val_loss'));
    assert.match(nested, /models\.spirals\.promotion: Unrecognized key: "metrc"/);
  });

  test('bad cron: the field and the range', async () => {
    const err = await check('cron.yaml', good.replace('promotion: { metric: val_loss, direction: min, mode: auto }', 'promotion: { metric: val_loss, direction: min, mode: auto }\n    retrain: { schedule: "61 * * * *" }'));
    assert.match(err, /models\.spirals\.retrain\.schedule: "61 \* \* \* \*" is not a valid cron expression/);
    assert.match(err, /minute/);
  });

  test('negative timeouts: named, with the accepted form', async () => {
    const err = await check('negative.yaml', good.replace('heartbeat: 4s', 'heartbeat: -4s').replace('cancelGrace: 5s', 'cancelGrace: -1'));
    assert.match(err, /timeouts\.heartbeat: "-4s" is not a valid heartbeat timeout/);
    assert.match(err, /timeouts\.cancelGrace: -1 is not a valid cancel grace/);
    assert.match(err, /non-negative duration/);
  });

  test('a model key with ../ is refused by path', async () => {
    const err = await check('dotdot.yaml', good.replace('  spirals:\n    trainer: example', '  ../x:\n    trainer: example'));
    assert.match(err, /models\.\.\.\/x/);
    assert.ok(!fs.existsSync(path.join(dir, 'x')) && !fs.existsSync(path.join(path.dirname(dir), 'x')));
  });
});

function digest(files: string[]): string {
  const h = crypto.createHash('sha256');
  for (const f of files) h.update(f).update(fs.existsSync(f) ? fs.readFileSync(f) : Buffer.from('(absent)'));
  return h.digest('hex');
}

/** Every path under dir (to prove nothing was created anywhere in it). */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      out.push(p);
      if (e.isDirectory()) walk(p);
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out.sort();
}

describe('bad submissions: non-zero exit, nothing started, nothing stored changed', () => {
  let env: KilnTestEnv;
  let outsideDir: string;
  let registryFiles: string[];
  const jobs = async (): Promise<string[]> => {
    const ids: string[] = [];
    for await (const w of env.client.workflow.list({ query: 'WorkflowType = "TrainingJob"' })) ids.push(w.workflowId);
    return ids;
  };

  before(async () => {
    outsideDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-outside-'));
    env = await startKilnEnv(
      defaultConfigYaml({
        trainers: `  outside:
    command: [node, ${path.join(FIXTURES, 'outside-trainer.mjs')}]
    env: { OUTSIDE_DIR: "${outsideDir}" }
    evaluate:
      queue: control
  example2:
    command: [node, ${EXAMPLE_TRAINER}]
    params:${EXAMPLE_TRAINER_PARAMS}`,
        models: `  spirals:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
    requiredMetrics: [val_loss, accuracy]
  outsider:
    trainer: outside
    dataset: synthetic://none/v1
    requiredMetrics: [val_loss, accuracy]`,
      }),
    );
    // A registry with one version in it, so "unchanged" is about real bytes.
    const reg = new SqliteModelRegistry(path.join(env.home, 'registry.sqlite'));
    await reg.register({ model: 'spirals', jobId: 'seed-job', runId: 'r', trainer: 'example', params: {}, datasetFingerprint: 'f', baseCheckpoint: null, metrics: { val_loss: 1, accuracy: 0.5 }, artifactPath: null, checkpointPath: null, requiredMetrics: [] });
    await reg.close();
    registryFiles = ['', '-wal', '-shm'].map((s) => path.join(env.home, `registry.sqlite${s}`));
    fs.mkdirSync(env.config.artifactsRoot, { recursive: true });
  });
  after(async () => {
    await env?.cleanup();
    fs.rmSync(outsideDir, { recursive: true, force: true });
  });

  /** Runs `kiln submit <args>` and checks it was refused without effects; returns stderr. */
  async function refused(args: string[], expect: RegExp): Promise<string> {
    const jobsBefore = await jobs();
    const regBefore = digest(registryFiles);
    const homeBefore = tree(env.home);
    const r = await runKiln(env, ['submit', ...args]);
    assert.notEqual(r.code, 0, `kiln submit ${args.join(' ')} exited 0: ${r.stdout}`);
    assert.match(r.stderr, expect);
    assert.equal(r.stdout.trim(), '', 'no job id printed');
    assert.deepEqual(await jobs(), jobsBefore, 'no workflow started');
    assert.equal(digest(registryFiles), regBefore, 'registry bytes unchanged');
    assert.deepEqual(tree(env.home), homeBefore, 'no file or dir created under the state folder (artifacts.root is inside it)');
    return r.stderr;
  }

  test('unknown model: lists the known ones', async () => {
    const err = await refused(['nope'], /model: unknown model "nope"/);
    assert.match(err, /spirals/);
  });

  test('unknown trainer (spec through the API): named, nothing started', async () => {
    const spec = { ...buildSpec(env.config, 'spirals'), trainer: 'no-such-trainer' } as JobSpec;
    await assert.rejects(submitJob(env.client, env.config, spec, { taskQueue: env.controlQueue }), (e: unknown) => e instanceof ConfigError && /trainer: unknown trainer "no-such-trainer"/.test(e.message));
    assert.deepEqual(await jobs(), []);
  });

  test('param out of range', async () => {
    await refused(['spirals', '--param', 'epochs=0'], /params\.epochs: .*(>=1|too small)/i);
    await refused(['spirals', '--param', 'lr=11'], /params\.lr: .*(<=10|too big)/i);
  });

  test('param of the wrong type', async () => {
    await refused(['spirals', '--param', 'epochs=many'], /params\.epochs: .*expected number/);
    await refused(['spirals', '--param', 'dataset=moons'], /params\.dataset: /);
  });

  test('a param the trainer does not declare', async () => {
    await refused(['spirals', '--param', 'learning_rate=0.1'], /(declares no param "learning_rate"|params: Unrecognized key: "learning_rate")/);
  });

  test('job ids with ../, / or shell metacharacters are refused and create nothing', async () => {
    const pwned = path.join(os.tmpdir(), `kiln-pwned-${process.pid}`);
    for (const id of ['../../x', '../escape', 'a/b', '/abs', '..', 'x;touch ' + pwned, `$(touch ${pwned})`, '`touch ' + pwned + '`', 'a b', 'x|y', "x'y", 'x\ny']) {
      await refused(['spirals', '--id', id], /invalid job id/);
    }
    assert.ok(!fs.existsSync(pwned), 'no shell ever ran');
    assert.ok(!fs.existsSync(path.join(env.home, 'x')) && !fs.existsSync(path.join(env.config.artifactsRoot, 'escape')), 'nothing created beside artifacts.root');
  });

  test('NUL in a job id or model name (API and spec JSON) is refused', async () => {
    const spec = buildSpec(env.config, 'spirals');
    await assert.rejects(submitJob(env.client, env.config, spec, { jobId: 'x\0y', taskQueue: env.controlQueue }), /invalid job id/);
    assert.throws(() => buildSpec(env.config, 'spir\0als'), /unknown model/);
    assert.throws(() => parseSpecJson(JSON.stringify({ model: 'x\u0000y', trainer: 'example', dataset: 'd' })), /invalid model name/);
    assert.throws(() => parseSpecJson(JSON.stringify({ model: '../x', trainer: 'example', dataset: 'd' })), /invalid model name/);
    assert.throws(() => parseSpecJson(JSON.stringify({ model: 'x', trainer: '../../bin/sh', dataset: 'd' })), /invalid trainer name/);
    assert.deepEqual(await jobs(), []);
  });

  test('control: a valid submit through the same path does start a job (the checks above are not vacuous)', async () => {
    const r = await runKiln(env, ['submit', 'spirals', '--id', 'valid-control-job']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'valid-control-job');
    assert.deepEqual(await jobs(), ['valid-control-job']);
    await env.client.workflow.getHandle('valid-control-job').terminate('test cleanup');
  });

  test('job spec JSON of 10 MB and one nested 100 000 deep: rejected quickly', () => {
    const big = JSON.stringify({ model: 'spirals', trainer: 'example', dataset: 'd', params: { blob: 'x'.repeat(10 * 1024 * 1024) } });
    let t0 = process.hrtime.bigint();
    assert.throws(() => parseSpecJson(big), /bytes; the limit is/);
    const bigMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const deep = `{"model":"spirals","trainer":"example","dataset":"d","params":{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`;
    t0 = process.hrtime.bigint();
    assert.throws(() => parseSpecJson(deep), /nested deeper than/);
    const deepMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const deepObj = `{"model":"spirals","trainer":"example","dataset":"d","params":{"a":${'{"b":'.repeat(20_000)}1${'}'.repeat(20_000)}}}`;
    t0 = process.hrtime.bigint();
    assert.throws(() => parseSpecJson(deepObj), /nested deeper than/);
    const deepObjMs = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`  rejected: 10 MiB spec in ${bigMs.toFixed(1)} ms, 100k-deep arrays (${(deep.length / 1024).toFixed(0)} KiB) in ${deepMs.toFixed(1)} ms, 20k-deep objects in ${deepObjMs.toFixed(1)} ms`);
  });

  test('a trainer announcing checkpoints outside its job dir: ignored with a warning, never resumed from, never deleted', async () => {
    await env.startControlWorker();
    const gpu = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('outsider', { retention: { keepLatest: 1, keepBest: 0 } });
    const s = (await h.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.session_info.attempts, 2);
    const dir = jobDir(env, h.workflowId);
    const inside = path.join(dir, 'checkpoints', 'step-1.ckpt');
    // Attempt 2 was told to resume from the honest checkpoint, not the outside one the tampered manifest named.
    assert.equal(fs.readFileSync(path.join(dir, 'resume-from.txt'), 'utf8'), inside);
    // The trainer itself rewrote checkpoints.json (a trainer can write anything in its work dir); what
    // matters is that Kiln never acted on the outside entries.
    assert.ok(readManifest(dir).some((c) => c.step === 99), 'the tampered manifest entry was there to be ignored');
    assert.equal(s.artifacts.root, dir);
    for (const c of [...s.artifacts.checkpoints, s.artifacts.last_checkpoint!]) assert.ok(!path.isAbsolute(c.path) && summaryPath(s, c.path).startsWith(`${dir}${path.sep}`), `checkpoint ${c.path} in the summary lies inside the job dir`);
    // keepLatest 1 would have pruned them had they been accepted as checkpoints.
    assert.ok(fs.existsSync(path.join(outsideDir, 'abs.ckpt')), 'the outside file is untouched');
    assert.ok(fs.existsSync(path.join(path.dirname(dir), `${h.workflowId}-escape.ckpt`)), 'the ../ file is untouched');
    const log = fs.readFileSync(gpu.logFile, 'utf8');
    const warnings = log.split('\n').filter((l) => l.includes('trainer announced a checkpoint outside the job dir; ignored'));
    assert.equal(warnings.length, 3, `one warning each for the absolute, ../ and symlinked paths:\n${warnings.join('\n')}`);
    assert.match(log, /ignoring a resume checkpoint outside the job dir/);
  });
});

describe('fuzzed CLI input: --param flags and JSON specs get a clear error or a valid spec, never a crash', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-fuzz-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = writeTmp(dir, 'temporal.yaml', defaultConfigYaml());
  const config = parseConfigText(fs.readFileSync(file, 'utf8'), file, { KILN_HOME: dir });
  let seed = 0x5eed;
  const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const weird = ['', '\u0000', '__proto__', 'constructor', 'toString', 'lr', 'epochs', 'x'.repeat(300), '💥', '\u202eevil', 'a.b', ' lr', 'lr ', '1e309', 'NaN', '-0', '[1,2', '{"a":1}', 'true', '9'.repeat(400)];
  const expectedError = (e: unknown) => e instanceof ConfigError || e instanceof UsageError;

  test('500 random --param lists: ConfigError/UsageError naming the problem, or a spec the schema accepts', () => {
    let accepted = 0;
    for (let i = 0; i < 500; i++) {
      const flags = Array.from({ length: 1 + Math.floor(r() * 3) }, () => `${pick(weird)}${r() < 0.9 ? '=' : ''}${pick([...weird, '0.05', '3', '7'])}`);
      try {
        const spec = buildSpec(config, 'spirals', { params: parseParamFlags(config, 'spirals', flags) });
        validateSpec(config, spec, 'train-spirals-fuzz');
        assert.equal(JobSpecSchema.safeParse(spec).success, true);
        accepted++;
      } catch (e) {
        assert.ok(expectedError(e), `flags ${JSON.stringify(flags)} threw ${String(e)}`);
        assert.ok((e as Error).message.length > 10 && !/undefined|\[object Object\]/.test((e as Error).message), `a clear message for ${JSON.stringify(flags)}: ${(e as Error).message}`);
      }
    }
    assert.ok(accepted > 0 && accepted < 500, `some random flags are valid (lr=1e309 is not), most are not: ${accepted}`);
  });

  test('prototype keys are refused like any undeclared param, not silently dropped', () => {
    for (const k of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      assert.throws(() => parseParamFlags(config, 'spirals', [`${k}=1`]), (e: unknown) => e instanceof ConfigError && new RegExp(`declares no param "${k}"`).test(e.message), k);
    }
  });

  test('300 random JSON specs (types, sizes, nesting, unicode, NUL): ConfigError or a valid spec', () => {
    for (let i = 0; i < 300; i++) {
      const obj: Record<string, unknown> = {};
      for (const k of ['model', 'trainer', 'dataset', 'params', 'pool', 'gpus', 'timeouts', pick(weird)]) {
        if (r() < 0.7) obj[k] = pick<unknown>([pick(weird), 1, -1, 1e308, null, [], {}, { lr: pick(weird) }, { heartbeat: pick(weird) }, 'spirals', 'example']);
      }
      let text = JSON.stringify(obj);
      if (r() < 0.2) text = text.slice(0, Math.floor(r() * text.length));
      try {
        const spec = parseSpecJson(text);
        assert.equal(JobSpecSchema.safeParse(spec).success, true);
      } catch (e) {
        assert.ok(e instanceof ConfigError, `${text.slice(0, 200)} threw ${String(e)}`);
      }
    }
  });
});
