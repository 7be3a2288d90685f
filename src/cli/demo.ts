/**
 * `kiln dev --demo`: submits a training job for a model from temporal.yaml and shows it to the end.
 */
import type { KilnConfig } from '../config/load';
import { submitJob } from '../client/jobs';
import { buildSpec } from '../config/spec';
import { connectClient } from '../temporal/connect';
import { watchJob } from './watch';

export async function runDemo(config: KilnConfig, address: string, model: string | undefined, out: (t: string) => void): Promise<void> {
  const name = model ?? Object.keys(config.models)[0];
  if (!name) throw new Error('temporal.yaml defines no model to run a demo job with');
  const client = await connectClient({ ...config, server: { ...config.server, address } });
  try {
    const h = await submitJob(client, config, buildSpec(config, name));
    out(`\n  Demo job ${h.workflowId} started (model ${name}). Watching it; it is also in the Web UI.\n`);
    const code = await watchJob(client, h.workflowId, out, { tty: false, intervalMs: 1000 });
    if (code !== 0) throw new Error(`demo job ${h.workflowId} did not complete (exit ${code})`);
    out(`\n  Demo job ${h.workflowId} completed. The stack keeps running until Ctrl-C.\n`);
  } finally {
    await client.connection.close();
  }
}
