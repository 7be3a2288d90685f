/**
 * Stepping over a bad checkpoint (issue 16, item 2): each checkpoint's size and sha256 are recorded in
 * the manifest when it is verified and checked before an attempt resumes from it. Real dev server,
 * real worker and trainer processes, a real SIGKILL; the checkpoint is corrupted on disk after it was
 * announced and verified.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { isSkipped } from '../src/shared/progress';
import { summaryPath } from '../src/shared/summary';
import { checkpointMismatch, digestCheckpoint, digestSmallCheckpoint } from '../src/supervisor/checkpointDigest';
import { readManifest } from '../src/supervisor/workdir';
import { CheckpointSuspects, noteFailure } from '../workflows/suspects';
import { assertRecovered, watchJob } from './helpers/faults';
import { defaultConfigYaml, jobDir, readTrainerLog, startKilnEnv, waitFor, type GpuWorkerProc, type KilnTestEnv } from './helpers/kiln';
import { jobProcesses, killAllStarted, runKiln, sleep, workerOfTrainer } from './helpers/processes';

const GRACE_MS = 3000;
const EVERY = 5;
const PARAMS = { epochs: 4, steps_per_epoch: 20, step_delay_ms: 40, checkpoint_every: EVERY };

describe('checkpoint digests', () => {
  test('a truncated, an overwritten and an unreadable checkpoint are told apart from an intact one', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-digest-'));
    try {
      const file = path.join(dir, 'step-5.ckpt.json');
      fs.writeFileSync(file, JSON.stringify({ step: 5, w: [1, 2, 3] }));
      const folder = path.join(dir, 'checkpoint-5');
      fs.mkdirSync(path.join(folder, 'sub'), { recursive: true });
      fs.writeFileSync(path.join(folder, 'a.bin'), 'aaaa');
      fs.writeFileSync(path.join(folder, 'sub', 'b.bin'), 'bbbbbb');
      const d = await digestCheckpoint(file);
      const f = await digestCheckpoint(folder);
      assert.equal(d.bytes, fs.statSync(file).size);
      assert.match(d.sha256, /^[0-9a-f]{64}$/);
      assert.equal(f.bytes, 10);
      assert.deepEqual([digestSmallCheckpoint(file), digestSmallCheckpoint(folder)], [d, f], 'the one-pass hash of a small checkpoint is the streamed one');
      assert.equal(await checkpointMismatch(file, d), null, 'intact file');
      assert.equal(await checkpointMismatch(folder, f), null, 'intact folder');
      assert.equal(await checkpointMismatch(file, {}), null, 'nothing recorded (an older manifest): not checked');
      assert.equal(await checkpointMismatch(file, { bytes: d.bytes }), null, 'size only (a manifest from when large checkpoints got no sha256): the size is checked');

      fs.truncateSync(file, 4);
      assert.match((await checkpointMismatch(file, d)) ?? '', /has 4 bytes, \d+ when it was verified/);
      fs.writeFileSync(path.join(folder, 'a.bin'), 'AAAA');
      assert.match((await checkpointMismatch(folder, f)) ?? '', /sha256 .* when it was verified \(overwritten\)/);
      fs.rmSync(path.join(folder, 'sub'), { recursive: true });
      assert.match((await checkpointMismatch(folder, f)) ?? '', /has 4 bytes, 10 when/);
      fs.rmSync(file);
      assert.match((await checkpointMismatch(file, d)) ?? '', /cannot be read/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('suspect checkpoints (workflow state)', () => {
  const c10 = { step: 10, path: '/jobs/j/checkpoints/step-10.ckpt.json', metrics: {}, bytes: 9, sha256: 'a'.repeat(64) };
  const c5 = { step: 5, path: '/jobs/j/checkpoints/step-5.ckpt.json', metrics: {}, bytes: 9, sha256: 'b'.repeat(64) };
  const failed = (from: typeof c10 | null, firstStep: number | null) =>
    ApplicationFailure.retryable('trainer exited with code 1 at step 0', 'TrainerFailed', { exitCode: 1, step: 0, logTail: '', resumedFrom: from, firstStep });

  test('failing right after resuming makes a checkpoint suspect, twice quarantined; carried across continue-as-new', () => {
    const s = new CheckpointSuspects();
    assert.equal(noteFailure(s, 1, 'trainer', failed(c10, 12), 'crash'), null, 'a failure after progress suspects nothing');
    assert.equal(noteFailure(s, 2, 'trainer', failed(null, null), 'crash'), null, 'no resume point: nothing to suspect');
    const first = noteFailure(s, 3, 'trainer', failed(c10, null), 'cannot resume');
    assert.deepEqual({ q: first?.quarantined, a: first?.failedAttempts }, { q: false, a: [3] });
    assert.deepEqual(s.skipList(), [{ path: c10.path, sha256: c10.sha256, quarantined: false }], 'the next attempt skips the suspect');
    assert.equal(noteFailure(s, 4, 'interruption', failed(c5, null), 'worker lost'), null, 'an interruption suspects nothing');
    assert.equal(s.skipList().length, 1, 'and keeps the suspect skipped');
    // The previous checkpoint fails too: c5 is now the suspect; c10 may be tried again.
    noteFailure(s, 5, 'trainer', failed(c5, null), 'cannot resume');
    assert.deepEqual(s.skipList().map((k) => k.path), [c5.path]);
    const again = noteFailure(s, 6, 'trainer', failed(c10, null), 'cannot resume');
    assert.deepEqual({ q: again?.quarantined, a: again?.failedAttempts }, { q: true, a: [3, 6] });
    const carried = CheckpointSuspects.restore(JSON.parse(JSON.stringify(s.snapshot())));
    assert.deepEqual(carried.skipList(), s.skipList(), 'the skip list survives continue-as-new');
    noteFailure(carried, 7, 'trainer', failed(c5, 30), 'crash later');
    assert.deepEqual(carried.skipList(), [{ path: c10.path, sha256: c10.sha256, quarantined: true }], 'a quarantined checkpoint stays skipped');
    assert.ok(isSkipped(c10, carried.skipList()));
    assert.equal(isSkipped({ ...c10, sha256: 'c'.repeat(64) }, carried.skipList()), null, 'a new checkpoint written at the same path is not held to the old record');
    assert.equal(CheckpointSuspects.restore({ list: 'garbage' }).list.length, 0, 'a malformed carried state is dropped');
  });
});

describe('bad checkpoint on disk', { concurrency: 1 }, () => {
  let env: KilnTestEnv;
  let workers: GpuWorkerProc[] = [];
  before(async () => {
    env = await startKilnEnv(
      defaultConfigYaml({
        timeouts: `  heartbeat: 4s
  stall: 20s
  cancelGrace: ${GRACE_MS / 1000}s`,
      }),
    );
    await env.startControlWorker();
    workers = await Promise.all([env.startGpuWorker({ slots: 1 }), env.startGpuWorker({ slots: 1 })]);
  });
  after(async () => {
    await killAllStarted(env);
    await env?.cleanup();
  });

  test('newest verified checkpoint truncated on disk, then the worker SIGKILLed: resumes from the previous one, completes, reports it', async () => {
    const h = await env.submit('spirals', { params: PARAMS });
    const dir = jobDir(env, h.workflowId);
    const watch = watchJob(env, h.workflowId);
    await waitFor(() => readManifest(dir).filter((c) => fs.existsSync(c.path)).length >= 2, 30_000, 'two verified checkpoints');
    const trainer = await waitFor(() => jobProcesses(env.home, h.workflowId).find((p) => p.mode === 'train')?.pid, 10_000, 'the trainer');
    const worker = workerOfTrainer(trainer)!;
    assert.ok(workers.some((w) => w.pid === worker), 'the trainer runs under one of our workers');
    // Frozen so it writes nothing more; the worker gets a moment to handle events already sent.
    process.kill(trainer, 'SIGSTOP');
    await sleep(500);
    const manifest = readManifest(dir).sort((a, b) => b.step - a.step);
    const [newest, previous] = manifest;
    assert.ok(newest && previous, 'two checkpoints in the manifest');
    assert.equal(newest.bytes, fs.statSync(newest.path).size, 'the manifest records the verified size');
    assert.equal(newest.sha256, (await digestCheckpoint(newest.path)).sha256, 'the manifest records the verified sha256');
    fs.truncateSync(newest.path, Math.floor(newest.bytes! / 2));
    process.kill(worker, 'SIGKILL');
    process.kill(trainer, 'SIGKILL');
    console.log(`  truncated step ${newest.step} (${newest.bytes} bytes) and killed worker ${worker}; step ${previous.step} is intact`);

    const r = await assertRecovered(env, h, watch, {
      training: 'retried',
      lastVerifiedBefore: previous.step,
      stepAtFault: null,
      checkpointEvery: EVERY,
      totalSteps: 80,
      retention: 3,
      graceMs: GRACE_MS,
    });
    assert.equal(r.resumedFrom, previous.step, `resumed from step ${previous.step}, not the truncated step ${newest.step}`);
    const skipped = r.summary.session_info.skipped_checkpoints ?? [];
    assert.equal(skipped.length, 1, `one checkpoint stepped over: ${JSON.stringify(skipped)}`);
    assert.equal(skipped[0]!.step, newest.step);
    assert.equal(summaryPath(r.summary, skipped[0]!.path), newest.path, 'the summary path (relative to artifacts.root) names the truncated file');
    assert.match(skipped[0]!.problem, new RegExp(`has ${Math.floor(newest.bytes! / 2)} bytes, ${newest.bytes} when it was verified`));

    const st = await runKiln(env, ['status', h.workflowId]);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`bad ckpt: +step ${newest.step} ${newest.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: it has \\d+ bytes`), st.stdout);
    console.log(`  ${st.stdout.split('\n').find((l) => l.includes('bad ckpt'))}`);
  });

  test('a checkpoint the trainer cannot resume from is suspect: the next attempt resumes from the previous one, completes, reports it', async () => {
    // Attempt 1 announces a poisoned step-10 checkpoint (intact on disk, its own sha256 wrong) and exits 1;
    // attempt 2 resumes from it and dies before its first step; attempt 3 must skip it.
    const h = await env.submit('spirals', { params: { ...PARAMS, fault: 'poison', fault_at_step: 10, fault_attempts: [1] } });
    const watch = watchJob(env, h.workflowId);
    const r = await assertRecovered(env, h, watch, { training: 'retried', lastVerifiedBefore: 5, stepAtFault: null, checkpointEvery: EVERY, totalSteps: 80, retention: 3, graceMs: GRACE_MS });
    const si = r.summary.session_info;
    assert.equal(si.attempts, 3, `attempts: ${JSON.stringify((si.attempt_log ?? []).map((a) => [a.n, a.outcome, a.resume_step, a.cause]))}`);
    assert.match(si.attempt_log?.[1]?.cause ?? '', /trainer exited with code 1/);
    assert.match(readTrainerLog(env, h.workflowId), /cannot resume: checkpoint .*step-10\.ckpt\.json is corrupt/, 'attempt 2 died on the poisoned checkpoint');
    assert.equal(r.resumedFrom, 5, 'the last attempt resumed from step 5, not the poisoned step 10');
    const suspects = si.suspect_checkpoints ?? [];
    assert.equal(suspects.length, 1, JSON.stringify(suspects));
    assert.deepEqual({ step: suspects[0]!.step, attempts: suspects[0]!.failed_attempts, quarantined: suspects[0]!.quarantined }, { step: 10, attempts: [2], quarantined: false });
    assert.ok(suspects[0]!.path.endsWith('step-10.ckpt.json'));
    const st = await runKiln(env, ['status', h.workflowId]);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /suspect: step 10 .*step-10\.ckpt\.json: attempt\(s\) 2 failed right after resuming from it/, st.stdout);
    console.log(`  ${st.stdout.split('\n').find((l) => l.includes('suspect:'))}`);
  });
});
