/**
 * The `command` resolver: runs a configured argv (no shell, like a trainer) that prints the dataset's
 * version on its first stdout line, e.g. `[dvc, status, --json]`, `[git, -C, data, rev-parse, HEAD]`
 * or `[psql, -Atc, "select max(updated_at) from ticks"]`. It is killed (with its process group) at
 * its timeout, and its output is capped.
 */
import { spawn } from 'node:child_process';
import { DatasetUnavailable } from './locate';

const MAX_OUTPUT = 64 * 1024;

export interface CommandRun {
  argv: string[];
  cwd: string;
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
}

function killGroup(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Runs the resolver and returns its version string (first non-empty stdout line, trimmed). */
export function runVersionCommand(dataset: string, r: CommandRun): Promise<string> {
  const [cmd, ...args] = r.argv.map((a) => a.replaceAll('{dataset}', dataset));
  const label = r.argv.join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, args, { cwd: r.cwd, env: { ...(r.env ?? process.env), KILN_DATASET: dataset }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    let err = '';
    let failed: string | null = null;
    const fail = (why: string): void => {
      failed ??= why;
      killGroup(child.pid);
    };
    const timer = setTimeout(() => fail(`timed out after ${r.timeoutMs} ms and was killed`), r.timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if (out.length > MAX_OUTPUT) fail(`printed more than ${MAX_OUTPUT} bytes`);
    });
    child.stderr.on('data', (d: Buffer) => {
      err = (err + d.toString('utf8')).slice(-4096);
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new DatasetUnavailable(`dataset ${dataset}: version command \`${label}\` could not start: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      killGroup(child.pid); // nothing it started outlives it
      const tail = err.trim() ? `; stderr: ${err.trim().split('\n').slice(-3).join(' | ')}` : '';
      if (failed) return reject(new DatasetUnavailable(`dataset ${dataset}: version command \`${label}\` ${failed}${tail}`));
      if (code !== 0) return reject(new DatasetUnavailable(`dataset ${dataset}: version command \`${label}\` exited with ${code ?? signal}${tail}`));
      const version = out.split('\n').map((l) => l.trim()).find(Boolean);
      if (!version) return reject(new DatasetUnavailable(`dataset ${dataset}: version command \`${label}\` printed no version on stdout${tail}`));
      resolve(version.slice(0, 1024));
    });
  });
}
