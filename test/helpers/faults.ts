/**
 * What every fault test asserts once the fault is over (issue 7): the job completed; the resume did not
 * go behind the last verified checkpoint and lost at most one checkpoint interval; no trainer of the
 * job survives; checkpoints on disk stayed within retention; the registry holds one version.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import type { JobSummary } from '../../src/shared/summary';
import { checkpointFiles, jobDir, waitFor, type KilnTestEnv } from './kiln';
import { isSupervised, jobProcesses, readManifest, registryVersionsForJob } from './processes';

export interface JobWatch {
  /**
   * Most checkpoint files seen on disk at once while a supervised trainer ran (its worker alive and
   * not stopped). Retention runs in the worker: a trainer whose worker died or froze writes files
   * nobody prunes until the next attempt takes over and sweeps them; maxOnDiskAnyTime includes those.
   */
  maxOnDisk: number;
  /** Most checkpoint files seen on disk at once at any moment (includes a dead attempt's leftovers before takeover). */
  maxOnDiskAnyTime: number;
  /** Most checkpoints in the job's manifest at once. */
  maxInManifest: number;
  /** Most processes of the job (trainer or evaluate) alive at once. */
  maxLive: number;
  samples: number;
  stop(): JobWatch;
}

/** Polls the job's work dir and /proc every `intervalMs` (checkpoints, manifest, live processes). */
export function watchJob(env: KilnTestEnv, jobId: string, intervalMs = 20): JobWatch {
  const dir = jobDir(env, jobId);
  const w: JobWatch = {
    maxOnDisk: 0,
    maxOnDiskAnyTime: 0,
    maxInManifest: 0,
    maxLive: 0,
    samples: 0,
    stop: () => {
      clearInterval(timer);
      return w;
    },
  };
  const timer = setInterval(() => {
    const files = checkpointFiles(env, jobId).length;
    const live = jobProcesses(env.home, jobId);
    w.samples += 1;
    w.maxLive = Math.max(w.maxLive, live.length);
    w.maxOnDiskAnyTime = Math.max(w.maxOnDiskAnyTime, files);
    if (live.some((p) => p.mode === 'train' && isSupervised(p.pid))) w.maxOnDisk = Math.max(w.maxOnDisk, files);
    w.maxInManifest = Math.max(w.maxInManifest, readManifest(dir).length);
  }, intervalMs);
  // A test that fails before stop() must not keep its test process alive (and the suite waiting) forever.
  timer.unref();
  return w;
}

export interface RecoveryExpectation {
  /** Last verified checkpoint step (manifest) just before the fault; null when training was over. */
  lastVerifiedBefore: number | null;
  /** The step the trainer had reached when the fault hit (exact where the test knows it). */
  stepAtFault: number | null;
  /** 'retried': the fault must cost a training attempt; 'untouched': it came after training; 'either'. */
  training: 'retried' | 'untouched' | 'either';
  checkpointEvery: number;
  totalSteps: number;
  /** keepLatest + keepBest (+ pinned): what retention allows on disk. */
  retention: number;
  graceMs: number;
}

export interface Recovery {
  summary: JobSummary;
  resumedFrom: number | null;
  lostSteps: number | null;
}

export async function assertRecovered(env: KilnTestEnv, h: WorkflowHandle, watch: JobWatch, e: RecoveryExpectation): Promise<Recovery> {
  const s = (await h.result()) as JobSummary;
  watch.stop();
  const jobId = h.workflowId;
  assert.equal(s.outcome, 'completed', `job ${jobId} outcome`);
  assert.equal(s.training_metrics.steps, e.totalSteps, 'all steps trained');

  let resumedFrom: number | null = null;
  let lostSteps: number | null = null;
  const retried = s.session_info.attempts > 1;
  if (e.training === 'retried') assert.ok(retried, `the fault made training retry (attempts ${s.session_info.attempts})`);
  if (e.training === 'untouched') assert.equal(s.session_info.attempts, 1, 'training ran once: the fault came after it and did not retrain');
  if (retried && e.lastVerifiedBefore !== null) {
    const resume = s.session_info.resume;
    resumedFrom = resume?.from_step ?? 0;
    assert.ok(resumedFrom >= e.lastVerifiedBefore, `resumed from step ${resumedFrom}, but step ${e.lastVerifiedBefore} was verified before the fault`);
    if (resume) assert.equal(resume.first_step, resume.from_step + 1, 'first step after resume = checkpoint step + 1');
    if (e.stepAtFault !== null) {
      lostSteps = Math.max(0, e.stepAtFault - resumedFrom);
      assert.ok(lostSteps <= e.checkpointEvery, `lost ${lostSteps} steps (reached ${e.stepAtFault}, resumed from ${resumedFrom}); one checkpoint interval is ${e.checkpointEvery}`);
    }
  } else if (!retried) {
    lostSteps = 0;
  }

  // A killed worker's trainer gets SIGTERM from its shim and SIGKILL after the grace period.
  await waitFor(() => jobProcesses(env.home, jobId).length === 0, e.graceMs + 3000, `no process of ${jobId} left`).catch(() => undefined);
  assert.deepEqual(jobProcesses(env.home, jobId), [], 'no orphan trainer or evaluate process remains');

  // Retention is applied when Kiln handles a checkpoint event, so a just-renamed checkpoint may sit on
  // disk beside the kept ones for the moment before its event is handled: allow that one.
  assert.ok(watch.samples > 20, `watched ${watch.samples} times`);
  assert.ok(watch.maxInManifest <= e.retention, `manifest held ${watch.maxInManifest} checkpoints; retention allows ${e.retention}`);
  assert.ok(watch.maxOnDisk <= e.retention + 1, `saw ${watch.maxOnDisk} checkpoint files on disk while a trainer ran; retention allows ${e.retention} (+1 in flight)`);
  const finalFiles = checkpointFiles(env, jobId);
  if (process.env.KILN_TEST_DEBUG) {
    const log = fs.readFileSync(path.join(jobDir(env, jobId), 'trainer.log'), 'utf8').split('\n');
    console.log(`  final checkpoint files: ${finalFiles.join(', ')}\n${log.filter((l) => /kiln:|SIGTERM|stopped|resum|fault/.test(l)).join('\n')}`);
  }
  assert.ok(finalFiles.length <= e.retention, `after the job: ${finalFiles.length} checkpoint files (${finalFiles.join(', ')}); retention allows ${e.retention}`);

  assert.equal(await registryVersionsForJob(env.home, jobId), 1, 'registry holds exactly one version for the job');
  assert.equal(s.registry.version !== null, true, 'summary names the registered version');
  return { summary: s, resumedFrom, lostSteps };
}

/** The furthest step a stopped attempt reached, from the trainer's own log line on SIGTERM. */
export function stoppedAtStep(env: KilnTestEnv, jobId: string): number | null {
  try {
    const log = fs.readFileSync(path.join(jobDir(env, jobId), 'trainer.log'), 'utf8');
    const m = [...log.matchAll(/stopped at step (\d+)\//g)].map((x) => Number(x[1]));
    return m.length ? Math.max(...m) : null;
  } catch {
    return null;
  }
}
