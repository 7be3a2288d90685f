/**
 * Latency figures: cancel signal → SIGTERM at the trainer → trainer exit → workflow closed, and a GPU
 * worker killed (SIGKILL) or drained (SIGTERM) mid-training → the job's first resumed step elsewhere.
 */
import { cancelSignal } from '../../src/shared/messages';
import { waitFor, type KilnTestEnv } from '../../test/helpers/kiln';
import { exited, loadavg as load } from '../stats';
import { cancelAndWait, GRACE_S, HEARTBEAT_S, LONG, readRecs, recFile, sleep, statRow, TABLE_HEAD, waitRec, type RawSamples, type TrainingBenchOptions, type Workers } from './harness';

interface CancelSample {
  sigterm: number;
  exit: number;
  closed: number;
}

/** cancel signal → SIGTERM at the trainer → trainer exit → workflow closed. */
async function benchCancel(env: KilnTestEnv, workers: Workers, runs: number, stubborn: boolean): Promise<CancelSample[]> {
  await workers.ensure(1);
  const out: CancelSample[] = [];
  for (let i = 0; i < runs; i++) {
    const h = await env.submit('bench', { params: { ...LONG, ignore_sigterm: stubborn } });
    const file = recFile(env, h.workflowId);
    const start = await waitRec(file, (r) => r.event === 'step', 30_000, 'first step');
    // Land the signal at a random phase of the 250 ms tick and the 500 ms heartbeat throttle.
    await sleep(1000 + Math.random() * 1000);
    const t0 = Date.now();
    await h.signal(cancelSignal, { reason: 'bench' });
    const closed = h.result().then(
      () => Date.now(),
      () => Date.now(),
    );
    const term = await waitRec(file, (r) => r.event === 'sigterm', 30_000, 'SIGTERM at the trainer');
    let exitT: number;
    if (stubborn) {
      // SIGKILL leaves no record: watch the pid.
      await waitFor(() => exited(start.pid), (GRACE_S + 30) * 1000, 'trainer exit', 5);
      exitT = Date.now();
    } else {
      exitT = (await waitRec(file, (r) => r.event === 'exit', 30_000, 'trainer exit')).t;
    }
    const c = await closed;
    const s = { sigterm: term.t - t0, exit: exitT - t0, closed: c - t0 };
    out.push(s);
    console.error(`  ${stubborn ? 'cancel-kill' : 'cancel'} ${i + 1}/${runs}: SIGTERM ${s.sigterm} ms, exit ${s.exit} ms, closed ${s.closed} ms (load ${load()})`);
  }
  return out;
}

export interface ResumeSample {
  /** kill → first step of the new attempt (the figure). */
  firstStep: number;
  /** kill → the new attempt's trainer started. */
  started: number;
  /** kill → the old trainer gone (shim on EOF, or cancellation on drain). */
  oldExit: number | null;
  lastCkptBefore: number;
  lastCkptWritten: number;
  resumedFrom: number;
  firstResumedStep: number;
}

/** A worker dies (SIGKILL) or drains (SIGTERM) mid-training; a second worker resumes the job (also bench/takeover.ts's host-gone figure). */
export async function benchWorkerLoss(env: KilnTestEnv, workers: Workers, runs: number, sig: 'SIGKILL' | 'SIGTERM'): Promise<ResumeSample[]> {
  const out: ResumeSample[] = [];
  for (let i = 0; i < runs; i++) {
    await workers.ensure(2);
    const h = await env.submit('bench', { params: LONG });
    const file = recFile(env, h.workflowId);
    await waitRec(file, (r) => r.event === 'checkpoint', 30_000, 'a first checkpoint');
    await sleep(1000 + Math.random() * 1000);
    const victim = await waitFor(() => workers.owner(h.workflowId), 5000, 'the worker running the trainer');
    const oldPid = readRecs(file).find((r) => r.event === 'start' && r.attempt === 1)!.pid;
    const lastCkptBefore = Math.max(...readRecs(file).filter((r) => r.event === 'checkpoint').map((r) => r.step));
    const t0 = Date.now();
    victim.kill(sig);
    const first = await waitRec(file, (r) => r.event === 'step' && r.attempt >= 2, 90_000, `first step after worker ${sig}`);
    const started = readRecs(file).find((r) => r.event === 'start' && r.attempt === first.attempt)!;
    const oldExit = readRecs(file).find((r) => r.event === 'exit' && r.pid === oldPid);
    // Including the one the old trainer wrote on SIGTERM, if Kiln heard of it in time.
    const lastCkptWritten = Math.max(...readRecs(file).filter((r) => r.event === 'checkpoint' && r.pid === oldPid).map((r) => r.step));
    const s: ResumeSample = {
      firstStep: first.t - t0,
      started: started.t - t0,
      oldExit: oldExit ? oldExit.t - t0 : exited(oldPid) ? null : -1,
      lastCkptBefore,
      lastCkptWritten,
      resumedFrom: started.step,
      firstResumedStep: first.step,
    };
    if (s.firstResumedStep !== s.resumedFrom + 1) throw new Error(`resumed from ${s.resumedFrom} but first step was ${s.firstResumedStep}`);
    out.push(s);
    console.error(
      `  ${sig} ${i + 1}/${runs}: first resumed step ${s.firstStep} ms (trainer started ${s.started} ms, old trainer exit ${s.oldExit} ms, periodic ckpt ${s.lastCkptBefore}, last ckpt written ${s.lastCkptWritten}, resumed from ${s.resumedFrom}) (load ${load()})`,
    );
    await cancelAndWait(h);
    if (sig === 'SIGTERM') await Promise.race([victim.exited, sleep(30_000)]);
    victim.kill('SIGKILL');
    await victim.exited;
  }
  return out;
}

/** The cancel table (figures cancel, cancel-kill); samples go to json.cancel / json.cancelKill. */
export async function cancelTable(env: KilnTestEnv, workers: Workers, o: TrainingBenchOptions, json: RawSamples): Promise<string[]> {
  const md = [TABLE_HEAD];
  if (o.only.includes('cancel')) {
    const s = await benchCancel(env, workers, o.runs, false);
    json.cancel = s;
    md.push(statRow('cancel signal → SIGTERM at trainer', s.map((x) => x.sigterm), 'p95 < 1 s', (st) => st.p95 < 1000));
    md.push(statRow('cancel signal → trainer exit (exits on SIGTERM)', s.map((x) => x.exit), `p95 < grace + 1 s = ${GRACE_S + 1} s`, (st) => st.p95 < (GRACE_S + 1) * 1000));
    md.push(statRow('cancel signal → workflow closed (info)', s.map((x) => x.closed), '–', () => true));
  }
  if (o.only.includes('cancel-kill')) {
    const s = await benchCancel(env, workers, o.runs, true);
    json.cancelKill = s;
    md.push(statRow('cancel signal → SIGTERM at trainer (ignores SIGTERM)', s.map((x) => x.sigterm), 'p95 < 1 s', (st) => st.p95 < 1000));
    md.push(statRow('cancel signal → trainer exit (SIGKILL after grace)', s.map((x) => x.exit), `p95 < grace + 1 s = ${GRACE_S + 1} s`, (st) => st.p95 < (GRACE_S + 1) * 1000));
  }
  md.push('');
  return md;
}

const oldExits = (s: ResumeSample[]) => s.flatMap((x) => (x.oldExit !== null && x.oldExit >= 0 ? [x.oldExit] : []));

/** The worker-loss table (figures sigkill, sigterm); samples go to json.sigkill / json.sigterm. */
export async function workerLossTable(env: KilnTestEnv, workers: Workers, o: TrainingBenchOptions, json: RawSamples): Promise<string[]> {
  const md = [TABLE_HEAD];
  if (o.only.includes('sigkill')) {
    const s = await benchWorkerLoss(env, workers, o.runs, 'SIGKILL');
    json.sigkill = s;
    md.push(statRow('worker SIGKILL → first resumed step', s.map((x) => x.firstStep), `≤ heartbeat + 2 s = ${HEARTBEAT_S + 2} s`, (st) => st.max <= (HEARTBEAT_S + 2) * 1000));
    md.push(statRow('worker SIGKILL → new trainer started (info)', s.map((x) => x.started), '–', () => true));
    md.push(statRow('worker SIGKILL → orphaned trainer exit (info)', oldExits(s), '–', () => true));
  }
  if (o.only.includes('sigterm')) {
    const s = await benchWorkerLoss(env, workers, o.runs, 'SIGTERM');
    json.sigterm = s;
    md.push(statRow('worker SIGTERM → first resumed step', s.map((x) => x.firstStep), '< 3 s', (st) => st.max < 3000));
    md.push(statRow('worker SIGTERM → new trainer started (info)', s.map((x) => x.started), '–', () => true));
    md.push(statRow('worker SIGTERM → old trainer exit (info)', oldExits(s), '–', () => true));
  }
  for (const [sig, s] of [['SIGKILL', json.sigkill], ['SIGTERM', json.sigterm]] as Array<[string, ResumeSample[] | undefined]>) {
    if (!s) continue;
    const fromLast = s.filter((x) => x.resumedFrom === x.lastCkptWritten).length;
    const lost = s.map((x) => x.lastCkptWritten - x.resumedFrom);
    md.push(`\nWorker ${sig}: resumed from the newest checkpoint the old trainer wrote in ${fromLast}/${s.length} runs; steps redone otherwise: ${lost.filter((l) => l > 0).join(', ') || 'none'}. First resumed step = resume checkpoint + 1 in every run.`);
  }
  md.push('');
  return md;
}
