/**
 * A real S3-API server for tests: moto's standalone server over HTTP on 127.0.0.1, on a free port,
 * one per test file (`.ci/run` installs `moto[server]`). Stopped by pid at the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { freePort } from '../../src/temporal/devServer';

export interface MotoServer {
  endpoint: string;
  pid: number;
  /** Environment for clients: dummy credentials moto accepts. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * moto's server checks a conditional put (If-None-Match / If-Match) and then stores the object, with
 * no lock between the two, on a threaded server: two racing create-only puts can both succeed, which
 * S3 itself never allows (moto 5.2.1, s3/responses.py put_object). The tests' moto makes the check
 * and the store of a conditional put one step, as S3's are, by holding a lock around conditional
 * puts only (lease objects and probes, a few hundred bytes); every other request runs as in moto.
 */
const ATOMIC_CONDITIONAL_PUTS = `
import sys, threading
from moto.s3.responses import S3Response
_lock = threading.Lock()
_put = S3Response.put_object
def put_object(self):
    if self.headers.get('If-None-Match') is None and self.headers.get('If-Match') is None:
        return _put(self)
    with _lock:
        return _put(self)
S3Response.put_object = put_object
from moto.server import main
sys.exit(main())
`;

/** The Python that has moto[server]: moto_server's own interpreter, else python3. */
function motoPython(): string | null {
  const which = spawnSync('sh', ['-c', 'command -v moto_server'], { encoding: 'utf8' });
  const bin = which.status === 0 ? which.stdout.trim() : '';
  const shebang = bin ? (fs.readFileSync(bin, 'utf8').split('\n')[0] ?? '') : '';
  const candidates = [...(shebang.startsWith('#!') ? [shebang.slice(2).trim().split(/\s+/)[0]!] : []), 'python3'];
  return candidates.find((py) => spawnSync(py, ['-c', 'import moto.server, moto.s3.responses, flask'], { stdio: 'ignore' }).status === 0) ?? null;
}

/** The moto server command (with atomic conditional puts), or null when moto[server] is not installed (tests then skip, saying so). */
export function motoCommand(): string[] | null {
  const py = motoPython();
  return py ? [py, '-c', ATOMIC_CONDITIONAL_PUTS] : null;
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
