/**
 * `kiln dev` owns what it starts (issue 16, item 7), on real processes, every pid checked: one
 * `kiln dev` per state folder whatever its address; nothing of it survives a SIGKILL; an orphaned
 * server of the state folder is stopped by the next `kiln dev`, and nothing else is; a server that dies
 * under it is restarted and a running job completes; a SIGTERM during startup leaves nothing running.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { RestartBackoff } from '../src/dev/backoff';
import { isDevServerOf } from '../src/dev/server';
import { isAlive, processStartTime } from '../src/supervisor/proc';
import { freePort, waitForServer } from '../src/temporal/devServer';
import { EXAMPLE_TRAINER, KILN_BIN, REPO, temporalBinary, waitFor } from './helpers/kiln';
import { runKiln, sleep } from './helpers/processes';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

interface Stack {
  dir: string;
  home: string;
  file: string;
  port: number;
  uiPort: number;
}

async function newStack(o: { dir?: string; ip?: string } = {}): Promise<Stack> {
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-dev-'));
  if (!o.dir) dirs.push(dir);
  const port = await freePort();
  const uiPort = await freePort();
  const yaml = fs
    .readFileSync(path.join(REPO, 'temporal.yaml'), 'utf8')
    .replace('  port: 7233', `  port: ${port}${o.ip ? `\n  ip: ${o.ip}` : ''}`)
    .replace('  uiPort: 8233', `  uiPort: ${uiPort}`)
    .replace('    metricsPort: 9464', '    metricsPort: 0')
    .replace('      metricsPort: 9465', '      metricsPort: 0')
    .replaceAll('./examples/trainer/train.mjs', EXAMPLE_TRAINER);
  const file = path.join(dir, `temporal-${port}.yaml`);
  fs.writeFileSync(file, yaml);
  return { dir, home: path.join(dir, 'state'), file, port, uiPort };
}

interface Dev {
  child: ChildProcess;
  out: string;
  text(): string;
  exited: Promise<number | null>;
}

function startDev(s: Stack, args: string[] = []): Dev {
  const out = path.join(s.dir, `dev-${Date.now()}-${Math.random().toString(36).slice(2, 6)}.out`);
  const fd = fs.openSync(out, 'a');
  const child = spawn(process.execPath, [KILN_BIN, '--config', s.file, 'dev', ...args], {
    env: { ...process.env, KILN_HOME: s.home, KILN_LOG_PRETTY: '0', TEMPORAL_ADDRESS: '', TEMPORAL_CLI: temporalBinary() },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return { child, out, text: () => fs.readFileSync(out, 'utf8'), exited };
}

async function killDev(d: Dev): Promise<void> {
  if (d.child.exitCode === null && d.child.signalCode === null) {
    d.child.kill('SIGKILL');
    await d.exited;
  }
}

/** Every live process of this state folder: the server (its SQLite path), workers and kiln dev (KILN_HOME), the lock child. */
function stackProcesses(home: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (!running(Number(name))) continue;
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      const env = fs.readFileSync(`/proc/${name}/environ`, 'utf8');
      if (cmd.includes(home) || env.split('\0').includes(`KILN_HOME=${home}`)) out.push(Number(name));
    } catch {
      /* gone, or not ours */
    }
  }
  return out;
}

/** Alive and not a zombie (a dead child of a SIGKILLed parent waits to be reaped by init). */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2));
  } catch {
    return false;
  }
}

const ready = (d: Dev) => waitFor(() => d.text().includes('Kiln is running'), 90_000, 'kiln dev to be ready');
const workerPids = (text: string) => [...text.matchAll(/"name":"(control|gpu-gpu)","pid":(\d+)/g)].map((m) => Number(m[2]));
const record = (home: string) => JSON.parse(fs.readFileSync(path.join(home, 'run', 'dev.json'), 'utf8')) as { serverPid: number; serverStart: number; address: string };

describe('restart backoff', () => {
  test('doubles on quick deaths, starts over after a healthy run (kills 20 s apart each get 250 ms)', () => {
    const b = new RestartBackoff();
    assert.deepEqual([500, 500, 500, 500].map((up) => b.next(up).delayMs), [250, 500, 1000, 2000]);
    assert.deepEqual([20_000, 20_000, 20_000].map((up) => b.next(up).delayMs), [250, 250, 250]);
    for (let i = 0; i < 10; i++) b.next(0);
    assert.equal(b.next(0).delayMs, 30_000);
  });
});

describe('orphan matching', () => {
  test('a live process is a dev server of the state folder only by pid + start time + command line', async () => {
    const decoy = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await waitFor(() => processStartTime(decoy.pid!) !== null, 5000, 'the decoy');
      const start = processStartTime(decoy.pid!);
      assert.equal(isDevServerOf(decoy.pid!, start, '/x/temporal.sqlite'), false, 'not start-dev');
      assert.equal(isDevServerOf(decoy.pid!, (start ?? 0) + 1, '/x/temporal.sqlite'), false, 'other start time');
      assert.ok(isAlive(decoy.pid!));
    } finally {
      decoy.kill('SIGKILL');
    }
  });
});

describe('kiln dev owns what it starts', () => {
  test('a second kiln dev on the state folder is refused (other dev.ip and ports); a server SIGKILLed under it is restarted and the job completes', { timeout: 240_000 }, async (t) => {
    const s = await newStack();
    const dev = startDev(s);
    try {
      await ready(dev);
      const first = record(s.home);
      // Same state folder, another address: refused before anything starts, naming the first.
      const other = await newStack({ dir: s.dir, ip: '127.0.0.2' });
      const t0 = Date.now();
      const second = await runKiln(null, ['--config', other.file, 'dev'], { env: { KILN_HOME: s.home, TEMPORAL_ADDRESS: '', TEMPORAL_CLI: temporalBinary(), KILN_LOG_PRETTY: '0' }, timeoutMs: 30_000 });
      assert.equal(second.code, 1, second.stdout + second.stderr);
      assert.match(second.stderr, new RegExp(`another \`kiln dev\` is already running on the state folder ${s.home} \\(pid ${dev.child.pid}, Temporal server 127\\.0\\.0\\.1:${s.port}, Web UI http://127\\.0\\.0\\.1:${s.uiPort}`));
      assert.doesNotMatch(second.stdout + second.stderr, /Temporal dev server started/);
      t.diagnostic(`second kiln dev refused in ${Date.now() - t0} ms`);
      assert.deepEqual(record(s.home), first, 'the refused kiln dev touched no record');
      assert.ok(isAlive(first.serverPid));

      const env = { KILN_CONFIG: s.file, KILN_HOME: s.home, TEMPORAL_ADDRESS: first.address };
      const sub = await runKiln(null, ['submit', 'spirals', '--param', 'epochs=6', '--param', 'step_delay_ms=60'], { env });
      assert.equal(sub.code, 0, sub.stderr);
      const jobId = sub.stdout.trim();
      await sleep(2500);
      const killedAt = Date.now();
      process.kill(first.serverPid, 'SIGKILL');
      await waitFor(() => /"msg":"Temporal dev server died; restarting"/.test(dev.text()), 10_000, 'the death to be logged');
      await waitFor(() => /"msg":"Temporal dev server restarted"/.test(dev.text()), 60_000, 'the restart');
      const restartMs = Date.now() - killedAt;
      const now = record(s.home);
      assert.notEqual(now.serverPid, first.serverPid);
      assert.ok(isAlive(now.serverPid));
      assert.ok(!running(first.serverPid));
      t.diagnostic(`dev server SIGKILLed → restarted and serving in ${restartMs} ms`);
      const watch = await runKiln(null, ['watch', jobId], { env, timeoutMs: 120_000 });
      assert.equal(watch.code, 0, watch.stdout + watch.stderr);
      for (const p of workerPids(dev.text())) assert.ok(isAlive(p), `worker ${p} survived the server's death`);
      const st = await runKiln(null, ['status', jobId, '--json'], { env });
      t.diagnostic(`the job completed with ${(JSON.parse(st.stdout) as { summary: { session_info: { attempts: number } } }).summary.session_info.attempts} attempt(s)`);

      // A worker killed after a healthy run (>= 10 s up) is restarted after the initial delay every time.
      const deaths = () => [...dev.text().matchAll(/"restartInMs":(\d+),"restarts":(\d+)[^\n]*"msg":"worker died; restarting"/g)].map((m) => [Number(m[1]), Number(m[2])]);
      let gpu = workerPids(dev.text())[1]!;
      for (let i = 1; i <= 2; i++) {
        process.kill(gpu, 'SIGKILL');
        await waitFor(() => deaths().length === i, 10_000, `death ${i} logged`);
        gpu = await waitFor(() => [...dev.text().matchAll(/"pid":(\d+)[^\n]*"msg":"worker started"/g)].map((m) => Number(m[1])).filter((p) => p !== gpu && !workerPids(dev.text()).includes(p) && running(p)).pop(), 30_000, 'the restarted worker');
        if (i === 1) await sleep(11_000);
      }
      assert.deepEqual(deaths(), [[250, 1], [250, 1]], 'kills 11 s apart: 250 ms each, the count starts over');
      dev.child.kill('SIGTERM');
      assert.equal(await dev.exited, 0);
      assert.deepEqual(stackProcesses(s.home), []);
    } finally {
      await killDev(dev);
    }
  });

  test('SIGKILL of kiln dev leaves no process of it; the next kiln dev stops an orphaned server of the state folder', { timeout: 240_000 }, async (t) => {
    const s = await newStack();
    const dev = startDev(s);
    try {
      await ready(dev);
      const rec = record(s.home);
      const pids = [dev.child.pid!, rec.serverPid, ...workerPids(dev.text())];
      assert.equal(pids.length, 4);
      assert.ok(stackProcesses(s.home).length >= 4);
      const t0 = Date.now();
      dev.child.kill('SIGKILL');
      await dev.exited;
      await waitFor(() => stackProcesses(s.home).length === 0, 15_000, `no process of kiln dev left (${stackProcesses(s.home).join(' ')})`);
      for (const p of pids) assert.ok(!running(p), `pid ${p} gone`);
      t.diagnostic(`SIGKILL kiln dev → server, workers and lock gone in ${Date.now() - t0} ms`);
    } finally {
      await killDev(dev);
    }
    // An orphan as an unguarded server would leave it: its kiln dev is dead, dev.json names it.
    const dbFile = path.join(s.home, 'temporal.sqlite');
    const orphan = spawn(temporalBinary(), ['server', 'start-dev', '--db-filename', dbFile, '--ip', '127.0.0.1', '--port', String(s.port), '--headless', '--log-level', 'error'], { stdio: 'ignore', detached: true });
    try {
      await waitForServer(`127.0.0.1:${s.port}`, 'default', 60_000);
      const dead = spawn('true');
      await new Promise((r) => dead.once('exit', r));
      fs.writeFileSync(path.join(s.home, 'run', 'dev.json'), JSON.stringify({ pid: dead.pid, pidStart: null, serverPid: orphan.pid, serverStart: processStartTime(orphan.pid!), dbFile, address: `127.0.0.1:${s.port}` }));
      const next = startDev(s);
      try {
        await ready(next);
        assert.match(next.text(), new RegExp(`"pid":${orphan.pid}[^\\n]*"msg":"found an orphaned Temporal dev server of this state folder`));
        assert.match(next.text(), /"msg":"stopped the orphaned Temporal dev server"/);
        assert.ok(!running(orphan.pid!));
        assert.notEqual(record(s.home).serverPid, orphan.pid);
        next.child.kill('SIGTERM');
        assert.equal(await next.exited, 0);
        assert.deepEqual(stackProcesses(s.home), []);
      } finally {
        await killDev(next);
      }
    } finally {
      orphan.kill('SIGKILL');
    }
  });

  test('SIGTERM during startup: startup stops, nothing is left running', { timeout: 240_000 }, async () => {
    const s = await newStack();
    // While the server is starting (its pid is recorded before it is ready), then while the namespace is prepared.
    for (const moment of ['server spawned', 'server ready'] as const) {
      const dev = startDev(s);
      try {
        await waitFor(() => {
          if (moment === 'server ready') return /"msg":"Temporal dev server started"/.test(dev.text());
          try {
            return record(s.home).serverPid > 0;
          } catch {
            return false;
          }
        }, 90_000, moment);
        const serverPid = record(s.home).serverPid;
        dev.child.kill('SIGTERM');
        assert.equal(await dev.exited, 0, dev.text());
        assert.ok(!running(serverPid), `server ${serverPid} stopped (${moment})`);
        await sleep(1500);
        assert.deepEqual(stackProcesses(s.home), [], `${moment}: nothing running`);
        if (moment === 'server spawned') assert.doesNotMatch(dev.text(), /"msg":"workers started"/);
        assert.equal(fs.existsSync(path.join(s.home, 'run', 'dev.json')), false);
      } finally {
        await killDev(dev);
      }
    }
  });
});
