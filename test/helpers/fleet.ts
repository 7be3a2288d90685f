/**
 * Several "hosts" on one machine for the fleet tests: a host is a mount namespace (`unshare -m`) with
 * a private tmpfs at the shared state path, held open by a `sleep` process so workers can be started
 * in it, killed and started again (a restarted worker on the same host) with `nsenter -m`. Also a TCP
 * proxy to the S3 server whose uploads can be held (no progress) or refused (403, as a bucket policy
 * that denies writes would). The one-shot host (a worker wrapped in `unshare -m`) and the /proc views
 * are in hosts.ts.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { KILN_BIN, waitFor } from './kiln';

export const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A TCP proxy to moto. `held`: client→server bytes are held (an upload that makes no progress).
 * `refuse`: a request whose first bytes match is answered 403 AccessDenied and its connection closed.
 */
export class StallProxy {
  held = false;
  refuse: RegExp | null = null;
  /** Requests answered 403 so far. */
  refused = 0;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  constructor(target: number) {
    this.server = net.createServer((c) => {
      const s = net.connect(target, '127.0.0.1');
      this.sockets.add(c).add(s);
      c.on('data', (d) => {
        if (this.refuse?.test(d.toString('latin1', 0, Math.min(d.length, 512)))) return this.deny(c, s);
        if (!this.held) return void s.write(d);
        c.pause();
        const retry = setInterval(() => {
          if (c.destroyed || s.destroyed) return clearInterval(retry);
          if (this.held) return;
          clearInterval(retry);
          s.write(d);
          c.resume();
        }, 50);
      });
      s.pipe(c);
      const end = () => {
        c.destroy();
        s.destroy();
      };
      c.on('error', end).on('close', end);
      s.on('error', end).on('close', end);
    });
  }
  private deny(c: net.Socket, s: net.Socket): void {
    this.refused += 1;
    s.unpipe(c);
    s.destroy();
    const body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied (refused by the test proxy)</Message></Error>';
    c.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A host: a mount namespace with a private tmpfs at `state`, held by a sleeping process. */
export interface Host {
  name: string;
  /** The holder's pid; `/proc/<pid>/root/<path>` is a path as this host sees it. */
  pid: number;
  /** Argv prefix that runs a command on this host. */
  wrap: string[];
  /** `path` as this host sees it (its tmpfs under the state path). */
  file(p: string): string;
  /** Runs `node bin/kiln <args>` on this host. */
  kiln(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

export async function startHost(name: string, state: string): Promise<Host> {
  const child = spawn('unshare', ['-m', '--', 'sh', '-c', 'mount -t tmpfs -o size=256m kiln-host "$0" && exec sleep 100000', state], { stdio: 'ignore' });
  const pid = child.pid!;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`host ${name}: unshare/mount exited ${child.exitCode}`);
    try {
      return fs.readFileSync(`/proc/${pid}/mounts`, 'utf8').includes(`kiln-host ${state} tmpfs`) && fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep';
    } catch {
      return false;
    }
  }, 10_000, `host ${name}'s tmpfs at ${state}`);
  const wrap = ['nsenter', '-t', String(pid), '-m', '--'];
  return {
    name,
    pid,
    wrap,
    file: (p) => `/proc/${pid}/root${p}`,
    kiln: (args, env) =>
      new Promise((resolve, reject) => {
        const k = spawn(wrap[0]!, [...wrap.slice(1), process.execPath, KILN_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        k.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        k.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => {
          k.kill('SIGKILL');
          reject(new Error(`kiln ${args.join(' ')} on host ${name} did not finish in 60 s\n${stdout}\n${stderr}`));
        }, 60_000);
        k.once('exit', (code) => {
          clearTimeout(timer);
          resolve({ code, stdout, stderr });
        });
      }),
    stop: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}
