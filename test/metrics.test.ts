/**
 * A GPU worker process's Prometheus endpoint, scraped over HTTP while real jobs run: Kiln's own
 * series (jobs running and free slots per pool, steps/s, seconds since progress, checkpoints kept and
 * bytes per job, cancellation and stall counters) next to the SDK core's temporal_* series.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { progressQuery } from '../src/shared/messages';
import { freePort } from '../src/temporal/devServer';
import { defaultConfigYaml, jobDir, startKilnEnv, waitFor, type KilnTestEnv } from './helpers/kiln';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parsePrometheus(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

describe('worker metrics (/metrics on a GPU worker process)', () => {
  let env: KilnTestEnv;
  let url: string;

  async function scrape(): Promise<Sample[]> {
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    return parsePrometheus(await res.text());
  }

  /** The one sample of `name` whose labels include `labels`; counters may carry a `_total` suffix. */
  function value(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
    const s = samples.filter((x) => (x.name === name || x.name === `${name}_total`) && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
    assert.ok(s.length <= 1, `one ${name} series for ${JSON.stringify(labels)}, got ${s.length}`);
    return s[0]?.value;
  }

  async function stepOf(jobId: string): Promise<number> {
    return (await env.client.workflow.getHandle(jobId).query(progressQuery)).step;
  }

  before(async () => {
    env = await startKilnEnv(defaultConfigYaml());
    await env.startControlWorker();
    const port = await freePort();
    url = `http://127.0.0.1:${port}/metrics`;
    await env.startGpuWorker({ pool: 'gpu', slots: 2, env: { KILN_METRICS_PORT: String(port) } });
  });

  after(async () => {
    await env?.cleanup();
  });

  test('an idle worker exports the Kiln gauges and the SDK core series', async () => {
    const s = await waitFor(async () => {
      const x = await scrape();
      return x.some((y) => y.name === 'temporal_num_pollers') ? x : null;
    }, 20_000, 'SDK core metrics');
    assert.equal(value(s, 'kiln_jobs_running', { pool: 'gpu' }), 0);
    assert.equal(value(s, 'kiln_gpu_slots_free', { pool: 'gpu' }), 2);
    assert.ok((value(s, 'temporal_num_pollers', { poller_type: 'activity_task', task_queue: 'kiln-gpu-gpu' }) ?? 0) >= 1, 'the worker polls its pool queue');
    assert.equal(value(s, 'temporal_worker_task_slots_available', { worker_type: 'ActivityWorker', task_queue: 'kiln-gpu-gpu' }), 2);
    assert.ok(s.some((x) => x.name === 'temporal_worker_start'), 'temporal_worker_start');
    assert.ok(s.some((x) => x.name.startsWith('temporal_request')), 'temporal_request*');
  });

  test('during two jobs: jobs running and free slots per pool, steps/s, seconds since progress, checkpoints kept and bytes; after cancels: the counter', async () => {
    const params = { epochs: 200, steps_per_epoch: 10, step_delay_ms: 50 };
    const a = await env.submit('spirals', { params });
    const b = await env.submit('spirals', { params });
    await waitFor(async () => (await stepOf(a.workflowId)) >= 25 && (await stepOf(b.workflowId)) >= 25, 60_000, 'both jobs past two checkpoints', 200);

    const s = await scrape();
    assert.equal(value(s, 'kiln_jobs_running', { pool: 'gpu' }), 2);
    assert.equal(value(s, 'kiln_gpu_slots_free', { pool: 'gpu' }), 0);
    assert.equal(value(s, 'temporal_worker_task_slots_used', { worker_type: 'ActivityWorker', task_queue: 'kiln-gpu-gpu' }), 2);
    for (const h of [a, b]) {
      const job = { job_id: h.workflowId };
      const sps = value(s, 'kiln_training_steps_per_second', job);
      // Each step sleeps 50 ms, so the trainer cannot exceed 20 steps/s; the window may round up a little.
      assert.ok(sps !== undefined && sps > 0 && sps <= 25, `steps/s for ${h.workflowId}: ${sps}`);
      const since = value(s, 'kiln_seconds_since_progress', job);
      assert.ok(since !== undefined && since >= 0 && since < 10, `seconds since progress: ${since}`);
      const kept = value(s, 'kiln_checkpoints_kept', job);
      // retention: keepLatest 2 + keepBest 1.
      assert.ok(kept !== undefined && kept >= 1 && kept <= 3, `checkpoints kept: ${kept}`);
      const bytes = value(s, 'kiln_checkpoint_bytes', job);
      assert.ok(bytes !== undefined && bytes > 0, `checkpoint bytes: ${bytes}`);
      // The example trainer's checkpoints are a few KiB each: the gauge is bytes, not KiB or a count.
      const onDisk = fs.readdirSync(path.join(jobDir(env, h.workflowId), 'checkpoints')).filter((n) => !n.endsWith('.tmp'));
      const sizes = onDisk.map((n) => fs.statSync(path.join(jobDir(env, h.workflowId), 'checkpoints', n)).size);
      assert.ok(bytes! >= Math.min(...sizes) && bytes! <= sizes.reduce((x, y) => x + y, 0) + Math.max(...sizes), `checkpoint bytes ${bytes} vs files ${sizes.join(', ')}`);
    }

    const before = await scrape();
    const cancelsBefore = value(before, 'kiln_cancellations', { pool: 'gpu' }) ?? 0;
    await a.signal('cancel', { reason: 'metrics test' });
    await assert.rejects(a.result());
    const s1 = await waitFor(async () => {
      const x = await scrape();
      return value(x, 'kiln_jobs_running', { pool: 'gpu' }) === 1 ? x : null;
    }, 30_000, 'one job running after the cancel');
    assert.equal(value(s1, 'kiln_gpu_slots_free', { pool: 'gpu' }), 1);
    assert.equal(value(s1, 'kiln_cancellations', { pool: 'gpu' }), cancelsBefore + 1, 'the cancellation was counted');
    assert.equal(value(s1, 'kiln_training_steps_per_second', { job_id: a.workflowId }), 0, 'an ended job reports 0 steps/s');

    await b.signal('cancel', { reason: 'metrics test' });
    await assert.rejects(b.result());
    const s2 = await waitFor(async () => {
      const x = await scrape();
      return value(x, 'kiln_jobs_running', { pool: 'gpu' }) === 0 ? x : null;
    }, 30_000, 'no job running');
    assert.equal(value(s2, 'kiln_gpu_slots_free', { pool: 'gpu' }), 2);
    assert.equal(value(s2, 'kiln_cancellations', { pool: 'gpu' }), cancelsBefore + 2);
    assert.ok(s2.some((x) => x.name.startsWith('temporal_activity_execution_') || x.name === 'temporal_activity_task_received'), 'SDK activity series after activities ran');
  });

  test('a hung trainer: seconds since progress grows, the stall is counted, the retry resumes', async () => {
    const h = await env.submit('spirals', {
      params: { epochs: 3, steps_per_epoch: 10, step_delay_ms: 30, fault: 'hang', fault_at_step: 15, fault_attempts: [1] },
      timeouts: { stall: '3s' },
    });
    const job = { job_id: h.workflowId };
    const stallsBefore = value(await scrape(), 'kiln_stalls', { pool: 'gpu' }) ?? 0;
    const hung = await waitFor(async () => {
      const x = await scrape();
      const since = value(x, 'kiln_seconds_since_progress', job);
      return since !== undefined && since >= 1.5 ? since : null;
    }, 30_000, 'seconds since progress rising while the trainer hangs', 200);
    assert.ok(hung < 10, `the hang is 3 s long before the stall kill, got ${hung}`);
    const s = await waitFor(async () => {
      const x = await scrape();
      return (value(x, 'kiln_stalls', { pool: 'gpu' }) ?? 0) > stallsBefore ? x : null;
    }, 30_000, 'stall counted');
    assert.equal(value(s, 'kiln_stalls', { pool: 'gpu' }), stallsBefore + 1);
    const summary = (await h.result()) as { outcome: string; session_info: { attempts: number } };
    assert.equal(summary.outcome, 'completed');
    assert.equal(summary.session_info.attempts, 2);
  });
});
