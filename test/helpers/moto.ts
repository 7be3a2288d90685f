/**
 * A real S3-API server for tests: moto's standalone server over HTTP on 127.0.0.1, on a free port,
 * one per test file (`.ci/run` installs `moto[server]`). Stopped by pid at the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { freePort } from '../../src/temporal/devServer';

export interface MotoServer {
  endpoint: string;
  pid: number;
  /** Environment for clients: dummy credentials moto accepts. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/** The moto_server command, or null when moto[server] is not installed (tests then skip, saying so). */
export function motoCommand(): string[] | null {
  const direct = spawnSync('moto_server', ['--help'], { stdio: 'ignore' });
  if (direct.status === 0) return ['moto_server'];
  const mod = spawnSync('python3', ['-c', 'import moto.server, flask'], { stdio: 'ignore' });
  return mod.status === 0 ? ['python3', '-m', 'moto.server'] : null;
}

export async function startMoto(): Promise<MotoServer> {
  const cmd = motoCommand();
  if (!cmd) throw new Error("moto_server not found: pip install 'moto[server]' (.ci/run installs it)");
  const port = await freePort();
  const child: ChildProcess = spawn(cmd[0]!, [...cmd.slice(1), '-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`moto_server exited (${child.exitCode}): ${stderr}`);
    const ok = await fetch(`${endpoint}/moto-api/`).then((r) => r.ok).catch(() => false);
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`moto_server did not answer on ${endpoint} within 30 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    endpoint,
    pid: child.pid!,
    env: { AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing', AWS_REGION: 'us-east-1' },
    stop: async () => {
      if (child.exitCode !== null) return;
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    },
  };
}
