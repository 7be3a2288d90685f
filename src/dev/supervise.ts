/**
 * The worker processes `kiln dev` runs: each in its own process group, restarted with backoff when it
 * dies, drained together on shutdown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { Logger } from '../logger';
import { stopProcessGroup } from '../temporal/devServer';
import { RestartBackoff } from './backoff';

const KILN_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'kiln');

export interface WorkerSpec {
  name: string;
  /** `kiln` arguments, e.g. ['worker', 'gpu', '--pool', 'gpu']. */
  args: string[];
}

interface Supervised extends WorkerSpec {
  child: ChildProcess | null;
  backoff: RestartBackoff;
  startedAt: number;
  timer: NodeJS.Timeout | null;
}

export class WorkerSupervisor {
  private readonly workers: Supervised[] = [];
  private env: NodeJS.ProcessEnv = {};
  private stopping = false;

  constructor(private readonly log: Logger) {}

  start(specs: WorkerSpec[], env: NodeJS.ProcessEnv): void {
    this.env = env;
    for (const s of specs) this.workers.push({ ...s, child: null, backoff: new RestartBackoff(), startedAt: 0, timer: null });
    for (const w of this.workers) this.spawn(w);
  }

  pids(): Array<{ name: string; pid: number | undefined }> {
    return this.workers.map((w) => ({ name: w.name, pid: w.child?.pid }));
  }

  /** No more restarts; SIGTERM every worker's group, SIGKILL what is left after `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    for (const w of this.workers) if (w.timer) clearTimeout(w.timer);
    await Promise.all(this.workers.map((w) => (w.child ? stopProcessGroup(w.child, graceMs) : Promise.resolve())));
  }

  private spawn(w: Supervised): void {
    // Own process group: a trainer's shim dies with its worker's group on shutdown escalation.
    const child = spawn(process.execPath, [KILN_BIN, ...w.args], { env: this.env, stdio: ['ignore', 'inherit', 'inherit'], detached: true });
    w.child = child;
    w.startedAt = Date.now();
    child.once('exit', (code, signal) => {
      w.child = null;
      if (this.stopping) return;
      const { delayMs: delay, restarts } = w.backoff.next(Date.now() - w.startedAt);
      this.log.error({ worker: w.name, code, signal, restartInMs: delay, restarts }, 'worker died; restarting');
      w.timer = setTimeout(() => {
        w.timer = null;
        if (!this.stopping) this.spawn(w);
      }, delay);
    });
  }
}
