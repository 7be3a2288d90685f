/**
 * Kiln's own worker metrics, emitted through the SDK runtime's meter so they appear on the same
 * Prometheus /metrics endpoint as the SDK core metrics.
 */
import type { Runtime } from '@temporalio/worker';
import type { KilnMetrics } from '../activities/deps';

export function createKilnMetrics(runtime: Runtime, pool: string, slots: number): KilnMetrics {
  const m = runtime.metricMeter;
  const running = m.createGauge('kiln_jobs_running', 'int', '', 'training jobs running on this worker');
  const free = m.createGauge('kiln_gpu_slots_free', 'int', '', 'free training slots on this worker');
  const sps = m.createGauge('kiln_training_steps_per_second', 'float', '', 'training steps per second, per job');
  const since = m.createGauge('kiln_seconds_since_progress', 'float', 's', 'seconds since the step last advanced, per job');
  const ckptCount = m.createGauge('kiln_checkpoints_kept', 'int', '', 'checkpoints kept on disk, per job');
  const ckptBytes = m.createGauge('kiln_checkpoint_bytes', 'int', 'By', 'bytes of kept checkpoints, per job');
  const cancels = m.createCounter('kiln_cancellations', '', 'training attempts cancelled (cancel, pause, shutdown)');
  const stalls = m.createCounter('kiln_stalls', '', 'trainers killed for making no progress');
  let n = 0;
  const setFree = (k: number) => free.set(k, { pool });
  setFree(slots);
  running.set(0, { pool });
  return {
    jobStarted(p) {
      n += 1;
      running.set(n, { pool: p });
      setFree(Math.max(0, slots - n));
    },
    jobEnded(p, jobId) {
      n = Math.max(0, n - 1);
      running.set(n, { pool: p });
      setFree(Math.max(0, slots - n));
      since.set(0, { job_id: jobId });
      sps.set(0, { job_id: jobId });
    },
    progress(jobId, v) {
      if (v !== null) sps.set(v, { job_id: jobId });
    },
    sinceProgress(jobId, s) {
      since.set(s, { job_id: jobId });
    },
    checkpoints(jobId, count, bytes) {
      ckptCount.set(count, { job_id: jobId });
      ckptBytes.set(bytes, { job_id: jobId });
    },
    cancelled(p) {
      cancels.add(1, { pool: p });
    },
    stalled(p) {
      stalls.add(1, { pool: p });
    },
  };
}
