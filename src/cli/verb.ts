/**
 * What every verb module shares: the context a verb runs in, the verb's shape, and `withClient`.
 * Verb modules import this, never main.ts (which imports every verb).
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { KilnConfig } from '../config/load';
import type { Logger } from '../logger';
import { connectClient, serverAddress } from '../temporal/connect';

export interface CliContext {
  argv: string[];
  config: () => KilnConfig;
  log: Logger;
  out: (text: string) => void;
}

export interface Verb {
  summary: string;
  usage: string;
  run: (ctx: CliContext) => Promise<number | void>;
}

/** Runs `fn` with a connected client; an unreachable server or unknown job becomes one clear line. */
export async function withClient<T>(config: KilnConfig, fn: (c: Client) => Promise<T>): Promise<T> {
  let client: Client;
  try {
    client = await connectClient(config, { connectTimeoutMs: 5000 });
  } catch (err) {
    throw new Error(
      `cannot reach the Temporal server at ${serverAddress(config)}: ${(err as Error).message.split('\n')[0]} ` +
        '(start it with `kiln dev`, or set server.address / TEMPORAL_ADDRESS; `kiln doctor` checks the setup)',
    );
  }
  try {
    return await fn(client);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) {
      throw new Error(`no job ${err.workflowId} in namespace ${config.server.namespace} (\`kiln list\` shows the jobs)`);
    }
    throw err;
  } finally {
    await client.connection.close();
  }
}
