/**
 * `kiln worker control` and `kiln worker gpu [--pool P]`: one worker per process, as a systemd unit
 * or k8s pod runs it. The SDK logger is bridged to pino before any connection; SIGTERM drains.
 */
import type { KilnConfig } from '../config/load';
import type { Logger } from '../logger';
import { installRuntime } from '../../workers/runtime';
import { createControlWorker } from '../../workers/control';
import { createGpuWorker } from '../../workers/gpu';

export async function runWorker(kind: 'control' | 'gpu', config: KilnConfig, log: Logger, pool: string, slots?: number): Promise<void> {
  const metricsPort = kind === 'control' ? config.workers.control.metricsPort : config.workers.pools[pool]?.metricsPort;
  installRuntime(log, process.env.KILN_METRICS_PORT !== undefined ? Number(process.env.KILN_METRICS_PORT) : metricsPort);
  const w = kind === 'control' ? await createControlWorker({ config, log }) : await createGpuWorker({ config, log, pool, slots, withMetrics: true });
  log.info({ taskQueue: w.worker.options.taskQueue, identity: w.worker.options.identity }, 'worker started');
  try {
    // The SDK handles SIGINT/SIGTERM: it stops polling, cancels running activities with
    // WORKER_SHUTDOWN (trainers get SIGTERM and checkpoint), waits for them, then resolves.
    await w.worker.run();
  } finally {
    await w.close();
    log.info('worker stopped');
  }
}
