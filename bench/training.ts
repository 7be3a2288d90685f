/**
 * TrainingJob benchmarks (issue 3): cancel latency, resume after a worker dies or drains, supervision
 * overhead and worker memory, on a real dev server with real worker and trainer processes.
 *
 *   node dist/bench/training.js [--runs N] [--pairs N] [--job-seconds S] [--memory-runs N]
 *                               [--only cancel,cancel-kill,sigkill,sigterm,overhead,memory] [--json FILE]
 *
 * Times come from the instrumented trainer bench/fixtures/trainer.mjs, which appends
 * {"t": Date.now(), "event": ...} lines to a file; the bench takes its own Date.now() at the moment it
 * signals or kills, on the same host clock. The figures live in bench/training/.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { startKilnEnv } from '../test/helpers/kiln';
import { loadavg as load } from './stats';
import { CONFIG, FIGURES, GRACE_S, HEARTBEAT_S, Workers, type RawSamples, type TrainingBenchOptions } from './training/harness';
import { cancelTable, workerLossTable } from './training/latency';
import { memoryTable } from './training/memory';
import { overheadTable } from './training/overhead';

function parseOptions(): TrainingBenchOptions & { json?: string } {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '10' },
      pairs: { type: 'string', default: '3' },
      'job-seconds': { type: 'string', default: '35' },
      'memory-runs': { type: 'string', default: '3' },
      only: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const only = values.only ? values.only.split(',') : FIGURES;
  for (const o of only) if (!FIGURES.includes(o)) throw new Error(`--only ${o}: unknown figure (one of ${FIGURES.join(', ')})`);
  return { runs: Number(values.runs), pairs: Number(values.pairs), jobSeconds: Number(values['job-seconds']), memoryRuns: Number(values['memory-runs']), only, json: values.json };
}

async function main(): Promise<void> {
  const o = parseOptions();
  const md: string[] = [];
  const json: RawSamples = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    loadBefore: load(),
    heartbeatS: HEARTBEAT_S,
    graceS: GRACE_S,
  };
  md.push(`Run ${json.date} · Node ${process.version} · ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'} · load before ${load()}`);
  md.push(`Config: heartbeat timeout ${HEARTBEAT_S} s, cancel grace ${GRACE_S} s, progressInterval default (1 min since issue 16; 5 s before)\n`);

  const env = await startKilnEnv(CONFIG);
  const workers = new Workers(env);
  const wants = (...figures: string[]) => figures.some((f) => o.only.includes(f));
  try {
    await env.startControlWorker();
    if (wants('cancel', 'cancel-kill')) md.push(...(await cancelTable(env, workers, o, json)));
    if (wants('sigkill', 'sigterm')) md.push(...(await workerLossTable(env, workers, o, json)));
    if (wants('overhead')) md.push(...(await overheadTable(env, workers, o, json)));
    if (wants('memory')) md.push(...(await memoryTable(env, workers, o.memoryRuns, json)));
  } finally {
    await workers.stopAll().catch(() => undefined);
    await env.cleanup();
  }
  json.loadAfter = load();
  md.push(`Load after: ${load()}`);
  console.log(md.join('\n'));
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(json, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
