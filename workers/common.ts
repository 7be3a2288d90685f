/**
 * Shared worker setup: config, logger, runtime, connection, client, registry.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import { resolveCommand, type KilnConfig } from '../src/config/load';
import type { Logger } from '../src/logger';
import { lazyRegistry } from '../src/registry/open';
import type { ModelRegistry } from '../src/registry/types';
import { connectNative } from '../src/temporal/connect';
import type { CommonDeps } from '../activities/deps';

/** The prebuilt workflow bundle (npm run build), so workers start without webpack; else the source path. */
export function workflowSource(): { workflowBundle: { codePath: string } } | { workflowsPath: string } {
  const bundle = path.resolve(__dirname, '..', 'workflow-bundle.js');
  const entry = require.resolve('../workflows');
  if (fs.existsSync(bundle) && fs.statSync(bundle).mtimeMs >= fs.statSync(entry).mtimeMs) return { workflowBundle: { codePath: bundle } };
  return { workflowsPath: entry };
}

/** A poller identity carrying the hash of the config the worker loaded (src/cli/doctorDrift.ts reads it back). */
export function workerIdentity(config: KilnConfig, workerId: string): string {
  return `cfg-${config.hash}/${workerId}`;
}

export interface WorkerBase {
  /** The worker's identity on the server: `cfg-<config hash>/<workerId>`, so kiln doctor sees which config it runs. */
  identity: string;
  config: KilnConfig;
  log: Logger;
  connection: NativeConnection;
  deps: CommonDeps;
  /** Closes the registry if it was opened. */
  closeRegistry: () => Promise<void>;
}

export async function workerBase(config: KilnConfig, log: Logger, role: string): Promise<WorkerBase> {
  const connection = await connectNative(config);
  const client = new Client({ connection, namespace: config.server.namespace });
  const registry = lazyRegistry(config);
  let opened: Promise<ModelRegistry> | undefined;
  const deps: CommonDeps = {
    config,
    log,
    client,
    workerId: `${os.hostname()}:${process.pid}:${role}`,
    registry: () => (opened = registry()),
    trainerArgv: (cmd) => resolveCommand(config, cmd),
  };
  const closeRegistry = async () => {
    const reg = await opened?.catch(() => undefined);
    await reg?.close();
  };
  return { identity: workerIdentity(config, deps.workerId), config, log, connection, deps, closeRegistry };
}
