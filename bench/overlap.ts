/**
 * Two live trainers for one job (issue 16): the frozen-owner scenario of test/fleetStop.test.ts,
 * repeated. Two GPU hosts in their own mount namespaces (private tmpfs at one state path), storage on a
 * real S3-API server (moto), one job per run; the owning worker is SIGSTOPped, /proc is sampled every
 * 50 ms for the job's trainers on both hosts, the other host takes over, the frozen worker is SIGCONTed
 * while it trains (test/helpers/frozenOwner.ts). Needs root (`unshare -m`) and moto[server].
 *
 *   node dist/bench/overlap.js [--runs 10] [--json FILE]
 *
 * Figures per run: the longest overlap of two live trainers of the job (target: never longer than
 * heartbeat timeout + grace), SIGSTOP → the frozen worker's trainer last seen, SIGSTOP → first trainer
 * on the other host (takeover), and whether the woken worker trained or stored anything (it must not).
 * Prints a markdown table for BENCHMARKS.md; writes nothing there (only a quiet machine's numbers go there).
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { machine } from '../test/helpers/chaos';
import { hostsSkipReason } from '../test/helpers/hosts';
import { GRACE_MS, HEARTBEAT_MS, runFrozenOwner, SAMPLE_MS, startFrozenFixture, type FrozenRun } from '../test/helpers/frozenOwner';
import { ms } from './report';
import { loadavg, stats } from './stats';

function options(): { runs: number; json?: string } {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' }, json: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log('node dist/bench/overlap.js [--runs 10] [--json FILE]');
    process.exit(0);
  }
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${values.runs}: a whole number ≥ 1`);
  return { runs, json: values.json };
}

type Row = Pick<FrozenRun, 'jobId' | 'overlapMs' | 'oldTrainerGoneMs' | 'takeoverMs' | 'samples' | 'aStaleActions' | 'aTrainersAfterCont'> & { completed: boolean; steps: number };

function table(rows: Row[], loadBefore: string, loadAfter: string, runs: number): string {
  const bound = HEARTBEAT_MS + GRACE_MS;
  const line = (name: string, xs: number[], target: string) => {
    const s = stats(xs);
    return `| ${name} | ${s.n} | ${ms(s.median)} | ${ms(s.p95)} | ${ms(s.max)} | ${target} |`;
  };
  const fenced = rows.filter((r) => r.aStaleActions.length === 0 && r.aTrainersAfterCont.length === 0).length;
  return [
    `Two live trainers for one job (frozen owner on another host) · ${new Date().toISOString()} · ${machine()}`,
    `Command: \`node dist/bench/overlap.js --runs ${runs}\` · load average before ${loadBefore}, after ${loadAfter}`,
    `Config: heartbeat timeout ${HEARTBEAT_MS / 1000} s, cancel grace ${GRACE_MS / 1000} s, storage s3 (moto), /proc sampled every ${SAMPLE_MS} ms`,
    '',
    '| figure | runs | median | p95 | max | target |',
    '|---|---|---|---|---|---|',
    line('two live trainers for one job (longest overlap)', rows.map((r) => r.overlapMs), `never longer than ${ms(bound)}`),
    line('SIGSTOP → frozen worker’s trainer last seen', rows.map((r) => r.oldTrainerGoneMs), `≤ ${ms(bound)}`),
    line('SIGSTOP → first trainer on the other host (takeover)', rows.map((r) => r.takeoverMs), '—'),
    '',
    `Jobs completed: ${rows.filter((r) => r.completed).length}/${rows.length}; the woken (SIGCONTed) worker trained and stored nothing in ${fenced}/${rows.length} runs.`,
  ].join('\n');
}

async function main(): Promise<void> {
  const o = options();
  const skip = hostsSkipReason();
  if (skip) throw new Error(`cannot run: ${skip}`);
  const fx = await startFrozenFixture();
  const rows: Row[] = [];
  const loadBefore = loadavg();
  try {
    for (let i = 0; i < o.runs; i++) {
      const r = await runFrozenOwner(fx);
      const row: Row = { jobId: r.jobId, overlapMs: r.overlapMs, oldTrainerGoneMs: r.oldTrainerGoneMs, takeoverMs: r.takeoverMs, samples: r.samples, aStaleActions: r.aStaleActions, aTrainersAfterCont: r.aTrainersAfterCont, completed: r.summary.outcome === 'completed', steps: r.summary.training_metrics.steps };
      rows.push(row);
      console.error(`run ${i + 1}/${o.runs}: overlap ${r.overlapMs} ms, old trainer last seen ${r.oldTrainerGoneMs} ms, takeover ${r.takeoverMs} ms, stale actions ${r.aStaleActions.join(', ') || 'none'}`);
    }
  } finally {
    await fx.close();
  }
  console.log(table(rows, loadBefore, loadavg(), o.runs));
  if (o.json) fs.writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), machine: machine(), heartbeatMs: HEARTBEAT_MS, graceMs: GRACE_MS, loadBefore, rows }, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
