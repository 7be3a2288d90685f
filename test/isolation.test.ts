/**
 * One job cannot hurt another, for real: a job whose disk fills up (a tiny tmpfs mounted on its job
 * dir) fails only its own attempt, while a neighbour on the same GPU worker completes untouched and
 * no temp file is left behind; a trainer that double-forks and calls setsid leaves nothing alive after
 * a cancel or after it completes (its cgroup is killed); trainer.log is capped and rotated.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cancelSignal, progressQuery } from '../src/shared/messages';
import type { JobSummary } from '../src/shared/summary';
import { SPIRALS_MODEL } from './helpers/fixtures';
import { defaultConfigYaml, jobDir, readTrainerLog, startKilnEnv, trainerPids, waitFor, type KilnTestEnv } from './helpers/kiln';
import { FIXTURES } from './helpers/processes';

const TRAINER = path.join(FIXTURES, 'isolation-trainer.mjs');
const PARAMS = `
      steps: { type: integer, min: 1, max: 100000, default: 10 }
      step_ms: { type: integer, min: 1, max: 60000, default: 100 }`;
const trainer = (name: string, mode: string) => `  ${name}:\n    command: [node, ${TRAINER}]\n    env: { MODE: ${mode} }\n    params:${PARAMS}\n`;
const model = (name: string, t: string) => `  ${name}:\n    trainer: ${t}\n    dataset: synthetic://spirals/v1\n    pool: gpu\n`;

/** Alive and not a zombie (an exited child of a reparenting init that does not reap quickly). */
function liveNow(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

function tmpFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.name.includes('.tmp')) out.push(path.join(d, e.name));
    }
  };
  walk(dir);
  return out;
}

describe('isolation between jobs', () => {
  let env: KilnTestEnv;
  const mounts: string[] = [];
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        trainers: trainer('iso-fill', 'fill') + trainer('iso-escape', 'escape'),
        models: `${SPIRALS_MODEL}\n${model('fill', 'iso-fill')}${model('escape', 'iso-escape')}`,
      }).replace('  progressInterval: 1s', '  progressInterval: 1s\n  trainerLog: { maxBytes: 4KiB, keep: 2 }'),
    );
    await env.startControlWorker();
  });
  after(async () => {
    for (const m of mounts) {
      try {
        execFileSync('umount', ['-l', m]);
      } catch {
        /* already unmounted */
      }
    }
    await env?.cleanup();
  });

  test('ENOSPC on one job’s dir fails only that attempt; the neighbour on the same worker completes; no .tmp litter', async () => {
    const w = await env.startGpuWorker({ slots: 2 });
    const jobId = 'train-fill-enospc';
    const dir = jobDir(env, jobId);
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir]);
    mounts.push(dir);
    const neighbour = await env.submit('spirals', { params: { epochs: 6, steps_per_epoch: 10, step_delay_ms: 100, checkpoint_every: 5 } });
    await waitFor(async () => (await neighbour.query(progressQuery)).step > 0, 30_000, 'the neighbour to train');
    const h = await env.submit('fill', { jobId, params: { steps: 12, step_ms: 100 } });
    const s = (await h.result().catch((err: unknown) => {
      throw new Error(`${String(err)}\ntrainer.log:\n${readTrainerLog(env, jobId)}\nworker log:\n${fs.readFileSync(w.logFile, 'utf8').split('\n').filter((l) => /ENOSPC|error|warn/i.test(l)).slice(-20).join('\n')}`);
    })) as JobSummary;
    assert.equal(s.outcome, 'completed');
    assert.ok(s.session_info.attempts >= 2, `the full-disk attempt failed and was retried (attempts ${s.session_info.attempts})`);
    const log = fs.readFileSync(w.logFile, 'utf8');
    assert.match(log, /ENOSPC/, 'the worker logged the disk error');
    assert.match(log, /JobIoError|cannot write the files of train-fill-enospc: ENOSPC/);
    const n = (await neighbour.result()) as JobSummary;
    assert.equal(n.outcome, 'completed');
    assert.equal(n.session_info.attempts, 1, 'the neighbour lost no attempt');
    assert.ok(n.session_info.workers.every((id) => id.includes(`:${w.pid}:`)), `the neighbour ran on the same worker throughout: ${n.session_info.workers.join(', ')}`);
    assert.equal(w.child.exitCode, null, 'the GPU worker is still running');
    assert.deepEqual(tmpFiles(dir), [], 'no temp files in the job dir');
    assert.deepEqual(tmpFiles(path.join(env.home, 'run')), [], 'no temp pid files');
    w.kill('SIGTERM');
    await w.exited;
  });

  test('a trainer that double-forks and calls setsid: nothing of it is alive after a cancel, nor after it completes', async () => {
    const w = await env.startGpuWorker({ slots: 2 });
    const long = await env.submit('escape', { params: { steps: 1000, step_ms: 100 } });
    const pidFile = path.join(jobDir(env, long.workflowId), 'escapee-1.pid');
    const escaped = await waitFor(() => {
      const pids = fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8').split('\n').filter(Boolean).map(Number) : [];
      return pids.length >= 3 && pids.filter(liveNow).length >= 2 ? pids : null;
    }, 30_000, 'the escapees to start');
    await waitFor(async () => (await long.query(progressQuery)).step > 2, 30_000, 'training');
    await long.signal(cancelSignal, { reason: 'test' });
    await assert.rejects(long.result());
    assert.deepEqual(escaped.filter(liveNow), [], `no escapee alive after cancel (pids ${escaped.join(', ')})`);

    const short = await env.submit('escape', { params: { steps: 10, step_ms: 100 } });
    const s = (await short.result()) as JobSummary;
    assert.equal(s.outcome, 'completed');
    const pids = fs.readFileSync(path.join(jobDir(env, short.workflowId), 'escapee-1.pid'), 'utf8').split('\n').filter(Boolean).map(Number);
    assert.ok(pids.length >= 3, `escapees recorded: ${pids.join(', ')}`);
    assert.deepEqual(pids.filter(liveNow), [], 'no escapee alive after completion');
    assert.equal(trainerPids(env.home).length, 0);
    const log = fs.readFileSync(w.logFile, 'utf8');
    assert.match(log, /each trainer runs in its own cgroup|cgroups are not writable here/, 'the worker says at start how it stops trainers');
    w.kill('SIGTERM');
    await w.exited;
  });

  test('trainer.log is capped and rotated (workers.trainerLog)', async () => {
    const w = await env.startGpuWorker({ slots: 1 });
    const h = await env.submit('escape', { params: { steps: 2000, step_ms: 1 } });
    assert.equal(((await h.result()) as JobSummary).outcome, 'completed');
    const dir = jobDir(env, h.workflowId);
    const logs = fs.readdirSync(dir).filter((n) => n.startsWith('trainer.log'));
    assert.deepEqual(logs.sort(), ['trainer.log', 'trainer.log.1']);
    // The cap holds within one 100 ms check of output (here ~1 KB).
    for (const n of logs) assert.ok(fs.statSync(path.join(dir, n)).size <= 4096 + 2048, `${n}: ${fs.statSync(path.join(dir, n)).size} bytes`);
    assert.match(fs.readFileSync(path.join(dir, 'trainer.log'), 'utf8'), /step 2000/);
    w.kill('SIGTERM');
    await w.exited;
  });
});
