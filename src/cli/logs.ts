/**
 * `kiln logs`: a job's trainer log (stdout and stderr of the trainer, all attempts), read from
 * <artifacts.root>/jobs/<job>/trainer.log; --follow keeps reading until the job closes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Client } from '@temporalio/client';
import { bool, int, jobIdArg, parseArgs } from './args';
import { withClient, type CliContext, type Verb } from './verb';

/** The last `n` lines of `file`. */
function tail(file: string, n: number): string[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n);
}

/** Bytes of `file` from `pos` to `size`. */
function readFrom(file: string, pos: number, size: number): string {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(size - pos);
  fs.readSync(fd, buf, 0, buf.length, pos);
  fs.closeSync(fd);
  return buf.toString('utf8');
}

async function follow(client: Client, id: string, file: string, n: number, emit: (text: string) => void): Promise<number> {
  const handle = client.workflow.getHandle(id);
  let pos = 0;
  let started = false;
  for (;;) {
    const running = (await handle.describe()).status.name === 'RUNNING';
    if (fs.existsSync(file)) {
      const size = fs.statSync(file).size;
      if (!started) {
        started = true;
        const lines = tail(file, n);
        emit(lines.join('\n') + (lines.length ? '\n' : ''));
        pos = size;
      } else if (size > pos) {
        emit(readFrom(file, pos, size));
        pos = size;
      }
    }
    // Read once more after the job closed: its last lines may have landed in between.
    if (!running) {
      if (!started) throw new Error(`kiln logs: ${id} ended without a trainer log at ${file}`);
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
  if (!bool(p, 'follow')) {
    if (!fs.existsSync(file)) throw new Error(`kiln logs: no trainer log for ${id} at ${file} (not started training yet, or it trained on another host without shared artifacts.root)`);
    emit(tail(file, n).join('\n') + '\n');
    return 0;
  }
  return withClient(config, (client) => follow(client, id, file, n, emit));
}

export const logsVerb: Verb = {
  summary: "a job's trainer log (stdout and stderr of the trainer, all attempts)",
  usage: `kiln logs <job> [--follow] [-n LINES] [--json]

Reads <artifacts.root>/jobs/<job>/trainer.log. --follow keeps printing until the job ends.
--json prints {"jobId", "line"} objects, one per line.

Examples:
  kiln logs train-spirals-3k9x2a -n 50
  kiln logs train-spirals-3k9x2a --follow`,
  run: logs,
};
