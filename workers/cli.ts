/**
 * `kiln worker control` and `kiln worker gpu [--pool P]`: one worker per process, as a systemd unit
 * or k8s pod runs it. The SDK logger is bridged to pino before any connection; SIGTERM drains.
 * bin/kiln adds this verb to the CLI's table, so src/ never imports workers/; the worker modules
 * (and the SDK's native worker) load only when the verb runs.
 */
import type { KilnConfig } from '../src/config/load';
import type { Logger } from '../src/logger';
import { parseArgs, str } from '../src/cli/args';
import type { CliContext, Verb } from '../src/cli/verb';
import { UsageError } from '../src/shared/errors';

async function runWorker(kind: 'control' | 'gpu', config: KilnConfig, log: Logger, pool: string, slots?: number): Promise<void> {
  const metricsPort = kind === 'control' ? config.workers.control.metricsPort : config.workers.pools[pool]?.metricsPort;
  const { installRuntime } = await import('./runtime');
  const { createControlWorker } = await import('./control');
  const { createGpuWorker, refuseBrokenCommands } = await import('./gpu');
  // Before the runtime exists: once installed, its native threads would keep a refusing process alive.
  if (kind === 'gpu') refuseBrokenCommands(config, pool, log);
  installRuntime(log, process.env.KILN_METRICS_PORT !== undefined ? Number(process.env.KILN_METRICS_PORT) : metricsPort);
  let w: Awaited<ReturnType<typeof createControlWorker>>;
  try {
    w = kind === 'control' ? await createControlWorker({ config, log }) : await createGpuWorker({ config, log, pool, slots, withMetrics: true });
  } catch (err) {
    // The installed runtime would keep a worker that cannot start alive: say why and leave.
    process.stderr.write(`kiln: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
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

async function runWorkerVerb(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { pool: { type: 'string' }, slots: { type: 'string' } }, 'worker');
  const kind = p.positional[0];
  if (kind !== 'control' && kind !== 'gpu') throw new UsageError('kiln worker: say which worker: `kiln worker control` or `kiln worker gpu [--pool P]`');
  const config = ctx.config();
  // Started by `kiln dev`: leave when it dies, even by SIGKILL, instead of running on unsupervised.
  const parent = Number(process.env.KILN_PARENT_PID ?? 0);
  if (parent > 0) {
    setInterval(() => {
      try {
        process.kill(parent, 0);
      } catch {
        ctx.log.warn({ parent }, 'kiln dev is gone; shutting down');
        process.kill(process.pid, 'SIGTERM');
      }
    }, 1000).unref();
  }
  const slots = str(p, 'slots');
  await runWorker(kind, config, ctx.log.child({ worker: kind }), str(p, 'pool') ?? 'gpu', slots ? Number(slots) : undefined);
  return 0;
}

export const workerVerb: Verb = {
  summary: 'run one worker process (control, or gpu --pool P)',
  usage: `kiln worker control
kiln worker gpu [--pool gpu] [--slots N]

What a systemd unit or k8s pod runs (see docs/deploy.md). SIGTERM drains: running trainers get
SIGTERM, checkpoint, and their jobs resume on another worker.`,
  run: runWorkerVerb,
};
