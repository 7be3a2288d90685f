/**
 * A control worker process for tests that kill it: the same worker `kiln worker control` runs, on the
 * task queue in KILN_TEST_CONTROL_QUEUE. With KILN_TEST_HOLD_REGISTER=<file>, attempt 1 of
 * registerVersion writes <file> after its registry write and then blocks, so the test can SIGKILL the
 * process at that known point (the version is stored, the activity's completion never reaches the server).
 *
 * Env: KILN_CONFIG, KILN_HOME, TEMPORAL_ADDRESS (as for `kiln worker control`).
 */
import * as fs from 'node:fs';
import { Context } from '@temporalio/activity';
import { Worker } from '@temporalio/worker';
import { createControlActivities } from '../../activities';
import type { RegisterVersionInput } from '../../activities/registry';
import { loadConfig } from '../../src/config/load';
import { createLogger } from '../../src/logger';
import { installRuntime } from '../../workers/runtime';
import { workerBase, workflowSource } from '../../workers/common';

async function main(): Promise<void> {
  const log = createLogger({ name: 'test-control-proc', level: process.env.KILN_LOG_LEVEL ?? 'info', pretty: false });
  installRuntime(log, undefined);
  const config = loadConfig(process.env.KILN_CONFIG);
  const base = await workerBase(config, log, 'control');
  const activities = createControlActivities(base.deps);
  const hold = process.env.KILN_TEST_HOLD_REGISTER;
  if (hold) {
    const register = activities.registerVersion;
    activities.registerVersion = async (input: RegisterVersionInput) => {
      const r = await register(input);
      if (Context.current().info.attempt === 1) {
        fs.writeFileSync(hold, JSON.stringify({ pid: process.pid, version: r.version, at: new Date().toISOString() }));
        log.warn({ version: r.version }, 'test hook: holding registerVersion after the registry write until killed');
        await new Promise<never>(() => undefined);
      }
      return r;
    };
  }
  const worker = await Worker.create({
    connection: base.connection,
    namespace: config.server.namespace,
    taskQueue: process.env.KILN_TEST_CONTROL_QUEUE ?? 'kiln-control',
    identity: base.deps.workerId,
    ...workflowSource(),
    activities,
    maxConcurrentActivityTaskExecutions: 20,
  });
  log.info({ taskQueue: worker.options.taskQueue, identity: worker.options.identity }, 'worker started');
  try {
    await worker.run();
  } finally {
    await base.connection.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`control worker: ${String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
});
