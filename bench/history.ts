/**
 * History growth (issue 16, item 8): history events per hour of training at 1 checkpoint/s and at
 * 1 checkpoint/min, with the default `workers.progressInterval` (1 min), on a real dev server with a
 * real GPU worker and the instrumented bench trainer (bench/fixtures/trainer.mjs, 1 step/s).
 *
 *   node dist/bench/history.js [--minutes 60]
 *
 * Each case trains for `--minutes` and counts the job's history events (all runs of its chain), and
 * those while a train attempt ran. The hourly figure is scaled from the training window, so in a
 * window shorter than an hour the attempt's burst of reports (up to 10 at its start) weighs more: it
 * is an upper estimate, exact only for a window of an hour. Target: ≤ 500 per
 * hour in both cases, no run over 10,240 events. Prints a table; it writes nothing to BENCHMARKS.md
 * (only a quiet machine's numbers go there).
 */
import { parseArgs } from 'node:util';
import { tsToMs } from '@temporalio/common/lib/time';
import type { JobSummary } from '../src/shared/summary';
import { startKilnEnv } from '../test/helpers/kiln';
import { loadavg } from './stats';
import { CONFIG } from './training/harness';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { minutes: { type: 'string', default: '60' } } });
  const minutes = Number(values.minutes);
  if (!Number.isFinite(minutes) || minutes < 1) throw new Error(`--minutes ${values.minutes}: a number ≥ 1`);
  const steps = Math.round(minutes * 60);
  const env = await startKilnEnv(CONFIG);
  const rows: string[] = [];
  try {
    await env.startControlWorker();
    await env.startGpuWorker();
    const loadBefore = loadavg();
    const cases = [
      { name: '1 checkpoint/s', checkpoint_every: 1 },
      { name: '1 checkpoint/min', checkpoint_every: 60 },
    ];
    const jobs = await Promise.all(cases.map((c) => env.submit('bench', { params: { steps, step_ms: 1000, checkpoint_every: c.checkpoint_every } })));
    for (const [i, h] of jobs.entries()) {
      const s = (await h.result()) as JobSummary;
      let events = 0;
      let maxRun = 0;
      let runs = 0;
      // Events while a train attempt ran (scheduled → closed), and how long they ran: the per-hour
      // figure of training, without prepare, evaluate and register (a fixed few dozen per job).
      let trainEvents = 0;
      let trainMs = 0;
      for await (const w of env.client.workflow.list({ query: `WorkflowId = "${h.workflowId}"` })) {
        const ev = (await env.client.workflow.getHandle(h.workflowId, w.runId).fetchHistory()).events ?? [];
        events += ev.length;
        maxRun = Math.max(maxRun, ev.length);
        runs += 1;
        // The window closes on the end of that train activity (matched by its scheduled event id),
        // not on the end of whatever activity ends first: the queued phase's poolUse ends meanwhile.
        let from: number | null = null;
        let trainId: string | null = null;
        for (const e of ev) {
          const t = tsToMs(e.eventTime);
          if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'train') {
            from = t;
            trainId = String(e.eventId);
          }
          if (from !== null) trainEvents += 1;
          const end = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskCanceledEventAttributes ?? e.activityTaskTimedOutEventAttributes;
          if (from !== null && end && String(end.scheduledEventId) === trainId) {
            trainMs += t - from;
            from = null;
          }
        }
      }
      const hours = trainMs / 3_600_000;
      rows.push(`| ${cases[i]!.name} | ${s.training_metrics.steps} | ${(hours * 60).toFixed(1)} min | ${events} | ${trainEvents} | ${Math.round(trainEvents / hours)} | ${runs} | ${maxRun} |`);
    }
    console.log(`History growth · ${new Date().toISOString()} · load before ${loadBefore}, after ${loadavg()} · progressInterval default (1 min)\n`);
    console.log('| case | steps | training | history events (job) | events while training | per hour of training (scaled) | runs | largest run |');
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of rows) console.log(r);
  } finally {
    await env.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
