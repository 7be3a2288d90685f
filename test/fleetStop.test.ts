/**
 * A frozen GPU worker on another host (issue 16): two GPU hosts in their own mount namespaces (private
 * tmpfs at one state path), checkpoints in a real S3-API server (moto), one job. The owning worker is
 * SIGSTOPped (its trainer keeps running: that is the danger); /proc is sampled every 50 ms for the
 * job's trainers on both hosts. The scenario is test/helpers/frozenOwner.ts (bench/overlap.ts repeats
 * it for figures); what "live" means is said there.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { isAlive } from '../src/supervisor/proc';
import { hostsSkipReason } from './helpers/hosts';
import { FROZEN_JOB_STEPS, GRACE_MS, HEARTBEAT_MS, runFrozenOwner, SAMPLE_MS, startFrozenFixture, type FrozenFixture } from './helpers/frozenOwner';

describe('fleet: a frozen GPU worker on another host', { skip: hostsSkipReason() }, () => {
  let fx: FrozenFixture;
  before(async () => {
    fx = await startFrozenFixture();
  });
  after(async () => {
    const motoPid = fx?.moto.pid;
    await fx?.close();
    if (motoPid) assert.ok(!isAlive(motoPid), 'moto is gone');
  });

  test('SIGSTOP of the owning worker → its trainer is stopped within heartbeat timeout + grace (never two live trainers longer); the other host resumes from a verified checkpoint and completes; SIGCONTed, the stale worker trains and stores nothing', async () => {
    const r = await runFrozenOwner(fx);
    const bound = HEARTBEAT_MS + GRACE_MS;
    console.log(
      `# ${r.samples} samples every ${SAMPLE_MS} ms: host A's trainer last seen ${r.oldTrainerGoneMs} ms after SIGSTOP, host B's first ${r.takeoverMs} ms after; ` +
        `two live trainers for at most ${r.overlapMs} ms (bound: heartbeat ${HEARTBEAT_MS} + grace ${GRACE_MS} ms)${r.overlaps.length ? `: ${r.overlaps.join(' | ')}` : ''}`,
    );
    console.log(`# after SIGCONT (state ${r.stateAfterCont}) host A's worker logged: ${r.aMessagesAfterCont.join(' | ') || 'nothing'}`);
    assert.ok(r.samples > 100, `sampled /proc ${r.samples} times`);
    assert.ok(r.overlapMs <= bound, `two live trainers of one job for ${r.overlapMs} ms (${r.overlaps.join(' | ')})`);
    assert.ok(r.oldTrainerGoneMs <= bound, `the frozen worker's trainer was last seen ${r.oldTrainerGoneMs} ms after SIGSTOP`);
    // The other host took over and resumed from a checkpoint verified in storage.
    const s = r.summary;
    assert.equal(s.outcome, 'completed');
    assert.equal(s.training_metrics.steps, FROZEN_JOB_STEPS);
    const resume = s.session_info.resume!;
    assert.ok(resume, 'the final attempt resumed');
    assert.ok(resume.from_step >= r.verifiedBeforeStop, `resumed from ${resume.from_step}; verified before SIGSTOP: ${r.verifiedBeforeStop}`);
    assert.equal(resume.first_step, resume.from_step + 1);
    assert.ok(s.session_info.workers.some((w) => w.includes(`:${r.bPid}:`)), `host B finished it: ${s.session_info.workers.join(', ')}`);
    const frozen = s.session_info.attempt_log?.find((x) => x.worker?.includes(`:${r.aPid}:`));
    assert.equal(frozen?.outcome, 'interrupted', `the frozen worker's attempt: ${JSON.stringify(frozen)}`);
    // The stale attempt is fenced: after SIGCONT host A ran again but started no trainer and stored nothing.
    assert.notEqual(r.stateAfterCont, 'T', 'host A runs again after SIGCONT');
    assert.deepEqual(r.aTrainersAfterCont, [], 'no trainer of the job on host A after SIGCONT');
    assert.deepEqual(r.aStaleActions, [], 'host A neither trained nor stored anything after SIGCONT');
    assert.ok(r.stored.length > 0 && r.stored.every((c) => c.verified), `every stored checkpoint verifies: ${JSON.stringify(r.stored)}`);
    assert.deepEqual(
      r.stored.map((c) => c.key.slice(c.key.lastIndexOf('/') + 1)).sort(),
      s.artifacts.checkpoints.map((c) => c.uri!.slice(c.uri!.lastIndexOf('/') + 1)).sort(),
      'what is stored is what the job kept',
    );
    for (const pid of [r.aPid, r.bPid]) assert.ok(!isAlive(pid), `worker ${pid} is gone`);
  });
});
