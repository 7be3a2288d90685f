/**
 * The control worker: TrainingJob/RetrainModel workflows and light activities on `kiln-control`.
 * Entry point of `kiln worker control` (a systemd unit or k8s pod in production).
 */
import { Worker } from '@temporalio/worker';
import { createControlActivities } from '../activities';
import type { RegistryHooks } from '../activities/registry';
import { TASK_QUEUE_CONTROL } from '../src/shared/messages';
import type { KilnConfig } from '../src/config/load';
import type { Logger } from '../src/logger';
import { isSharedRegistry } from '../src/registry/open';
import { workerBase, workflowSource } from './common';

export interface ControlWorkerOptions {
  config: KilnConfig;
  log: Logger;
  taskQueue?: string;
  hooks?: RegistryHooks;
}

export async function createControlWorker(o: ControlWorkerOptions): Promise<{ worker: Worker; close: () => Promise<void> }> {
  const base = await workerBase(o.config, o.log, 'control');
  if (isSharedRegistry(o.config)) {
    // A shared registry is checked before the worker polls: a bad URL, an unreachable server or a
    // wrong password stops the start with the reason, instead of failing the first job that registers.
    try {
      const reg = await base.deps.registry();
      o.log.info({ registry: reg.where, schemaVersion: await reg.schemaVersion() }, 'model registry: PostgreSQL');
    } catch (err) {
      await base.connection.close();
      throw err;
    }
  }
  const worker = await Worker.create({
    connection: base.connection,
    namespace: o.config.server.namespace,
    taskQueue: o.taskQueue ?? TASK_QUEUE_CONTROL,
    identity: base.identity,
    ...workflowSource(),
    activities: createControlActivities(base.deps, o.hooks),
    maxConcurrentActivityTaskExecutions: 20,
  });
  return {
    worker,
    close: async () => {
      await base.connection.close();
      await base.closeRegistry();
    },
  };
}
