/**
 * `kiln logs`: a job's trainer log (stdout and stderr of the trainer, all attempts), read from
 * <artifacts.root>/jobs/<job>/trainer.log, or, with storage.kind: s3 and no such file on this host,
 * from the parts every attempt uploaded; --follow keeps reading until the job closes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Client } from '@temporalio/client';
import { logPrefix, openStore, readLogs, type ObjectStore } from '../storage';
import { bool, int, jobIdArg, parseArgs } from './args';
import { withClient, type CliContext, type Verb } from './verb';

/** Where the log is read from: this host's file, or (storage.kind: s3, file absent) every attempt's part in storage. */
interface LogSource {
  where: string;
  /** The whole log as it is now; undefined while there is none. */
  read(): Promise<string | undefined>;
}

function fileSource(file: string): LogSource {
  return { where: file, read: async () => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined) };
}

function storeSource(store: ObjectStore, prefix: string): LogSource {
  return { where: `${store.uri}/${prefix}`, read: async () => (await readLogs(store, prefix))?.text };
}

function lastLines(text: string, n: number): string {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const out = lines.slice(-n);
  return out.join('\n') + (out.length ? '\n' : '');
}

async function follow(client: Client, id: string, src: LogSource, n: number, emit: (text: string) => void): Promise<number> {
  const handle = client.workflow.getHandle(id);
  let pos = 0;
  let started = false;
  for (;;) {
    const running = (await handle.describe()).status.name === 'RUNNING';
    const text = await src.read();
    if (text !== undefined) {
      if (!started) {
        started = true;
        emit(lastLines(text, n));
      } else if (text.length > pos) {
        emit(text.slice(pos));
      }
      pos = text.length;
    }
    // Read once more after the job closed: its last lines may have landed in between.
    if (!running) {
      if (!started) throw new Error(`kiln logs: ${id} ended without a trainer log at ${src.where}`);
      return 0;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function logs(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { follow: { type: 'bool', alias: 'f' }, lines: { type: 'string', alias: 'n' }, json: { type: 'bool' } }, 'logs');
  const id = jobIdArg(p, 'logs');
  const config = ctx.config();
  const file = path.join(config.artifactsRoot, 'jobs', id, 'trainer.log');
  const json = bool(p, 'json');
  const emit = (text: string) => {
    if (!text) return;
    if (json) for (const line of text.split('\n').filter((l) => l !== '')) ctx.out(JSON.stringify({ jobId: id, line }));
    else process.stdout.write(text);
  };
  const n = int(p, 'lines', 'logs') ?? 200;
  // This host's file when it has one; with storage.kind: s3 and no local file, what the GPU workers uploaded.
  const store = !fs.existsSync(file) && config.storage.kind === 's3' ? openStore(config.storage, config) : null;
  try {
    const src = store ? storeSource(store, logPrefix(id, 'trainer')) : fileSource(file);
    if (store) process.stderr.write(`kiln logs: no trainer log on this host; reading the uploaded log from ${src.where}\n`);
    if (!bool(p, 'follow')) {
      const text = await src.read();
      if (text === undefined) {
        const where = store ? `${file} nor in ${src.where}` : `${file} (not started training yet, or it trained on another host without shared artifacts.root; storage.kind: s3 makes logs readable everywhere)`;
        throw new Error(`kiln logs: no trainer log for ${id} at ${where}`);
      }
      emit(lastLines(text, n));
      return 0;
    }
    return await withClient(config, (client) => follow(client, id, src, n, emit));
  } finally {
    store?.close();
  }
}

export const logsVerb: Verb = {
  summary: "a job's trainer log (stdout and stderr of the trainer, all attempts)",
  usage: `kiln logs <job> [--follow] [-n LINES] [--json]

Reads <artifacts.root>/jobs/<job>/trainer.log; with storage.kind: s3 and no such file on this host
(the job trained elsewhere), reads every attempt's log from storage (and says so on stderr).
--follow keeps printing until the job ends.
--json prints {"jobId", "line"} objects, one per line.

Examples:
  kiln logs train-spirals-3k9x2a -n 50
  kiln logs train-spirals-3k9x2a --follow`,
  run: logs,
};
