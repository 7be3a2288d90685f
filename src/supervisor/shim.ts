/**
 * The supervisor shim between a GPU worker and its trainer:
 *
 *   worker ──stdin (pings)──▶ shim ──spawn──▶ trainer (own process group, own cgroup where allowed)
 *   worker ◀──fd 3 (events)── shim ◀──fd 3── trainer
 *
 * - The trainer's fd 3 is the shim's pipe, not the worker's: the shim forwards events to the worker
 *   while it lives and journals checkpoint events to the attempt's journal file (so the next attempt
 *   can adopt a checkpoint announced after the worker died). The trainer never gets EPIPE because the
 *   worker died. Its stdout and stderr append to trainer.log, which the shim caps and rotates.
 * - When the worker goes away (EOF on stdin, even after SIGKILL) or stops pinging for the heartbeat
 *   timeout (frozen, a paused VM, a blocked event loop), the shim SIGTERMs the trainer, waits the
 *   grace period, then kills its cgroup (or its process group where there is no cgroup).
 * - When the trainer exits, everything it started dies with it (`cgroup.kill`).
 *
 * Usage: node shim.js <config JSON> -- <argv...>
 * Exit code: the trainer's, 128+signal if it died by a signal, 75 if the shim stopped it because the
 * worker went silent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { constants } from 'node:os';
import * as path from 'node:path';
import { createCgroup, killCgroup, signalCgroup } from './cgroup';
import { commandProblem } from './commandCheck';
import { CANNOT_START, ExitCode } from './exitCodes';
import { processStartTime } from './proc';
import { diskBytes } from './retention';
import { EventJournal, LogCap, writeFileAtomic } from './shimio';

export interface ShimConfig {
  pidfile: string;
  graceMs: number;
  /** Stop the trainer when the worker has not pinged for this long; 0 never. */
  heartbeatMs: number;
  logFile: string;
  logMaxBytes: number;
  logKeep: number;
  /** The attempt's journal of checkpoint events; '' for none. */
  journal: string;
  /** The lease that fences journaling: only while `file` still names `token`. */
  lease: { file: string; token: string } | null;
  /** Where this trainer's cgroup goes; null: process group only. */
  cgroupParent: string | null;
  cgroupName: string;
  /** Recorded in the pid file, for the next worker on this host. */
  record: { jobId: string; attempt: number; taskToken: string | null };
}

/** Written where the next worker on this host finds it (pidfiles.ts reads it). */
function writeRecord(cfg: ShimConfig, rec: object): void {
  try {
    writeFileAtomic(cfg.pidfile, `${cfg.pidfile}.${process.pid}.tmp`, JSON.stringify(rec));
  } catch {
    /* a full disk: the worker still knows the trainer by its child */
  }
}

function leaseOwned(lease: ShimConfig['lease']): () => boolean {
  if (!lease) return () => true;
  return () => {
    try {
      return (JSON.parse(fs.readFileSync(lease.file, 'utf8')) as { token?: string }).token === lease.token;
    } catch {
      return false;
    }
  };
}

function startChild(argv: string[], cg: string | null, logFile: string): ChildProcess {
  // With a cgroup, the trainer moves itself into it before exec, so not even its first fork escapes.
  const [cmd, args] = cg ? ['/bin/sh', ['-c', 'echo $$ > "$0/cgroup.procs" 2>/dev/null; exec "$@"', cg, ...argv]] : [argv[0]!, argv.slice(1)];
  // stdout/stderr go straight to trainer.log (appending), so they outlive the shim; LogCap caps it.
  const log = fs.openSync(logFile, 'a');
  try {
    return spawn(cmd, args, { stdio: ['pipe', log, log, 'pipe'], detached: true, env: process.env });
  } finally {
    fs.closeSync(log);
  }
}

function main(): void {
  const sep = process.argv.indexOf('--');
  const argv = process.argv.slice(sep + 1);
  let cfg: ShimConfig;
  try {
    cfg = JSON.parse(process.argv[2] ?? '') as ShimConfig;
  } catch {
    cfg = null as unknown as ShimConfig;
  }
  if (sep !== 3 || !cfg?.pidfile || argv.length === 0) {
    process.stderr.write('kiln shim: usage: shim <config JSON> -- <argv...>\n');
    process.exit(ExitCode.shimUsage);
  }
  const log = new LogCap(cfg.logFile, cfg.logMaxBytes, cfg.logKeep);
  const say = (msg: string): void => log.say(`kiln shim: ${msg}\n`);
  const cg = cfg.cgroupParent ? createCgroup(cfg.cgroupParent, cfg.cgroupName) : null;
  if (cfg.cgroupParent && !cg) say(`cannot create a cgroup under ${cfg.cgroupParent}; the trainer runs in its process group only`);
  // Checked here, not left to spawn: behind the cgroup's /bin/sh a missing command is just exit 127.
  const problem = commandProblem(argv, process.cwd());
  if (problem) {
    say(`${CANNOT_START} ${JSON.stringify(argv[0])}: ${problem}`);
    process.exit(ExitCode.cannotStart);
  }
  let child: ChildProcess;
  try {
    child = startChild(argv, cg, cfg.logFile);
  } catch (err) {
    say(`${CANNOT_START} ${JSON.stringify(argv[0])}: ${String(err)}`);
    process.exit(ExitCode.cannotStart);
  }
  child.once('error', (err) => {
    say(`${CANNOT_START} ${JSON.stringify(argv[0])}: ${err.message}`);
    process.exit(ExitCode.cannotStart);
  });
  if (!child.pid) return;
  supervise(cfg, argv, child, cg, log, say);
}

function supervise(cfg: ShimConfig, argv: string[], child: ChildProcess, cg: string | null, log: LogCap, say: (m: string) => void): void {
  const pgid = child.pid!;
  const record = {
    trainerPid: pgid,
    trainerStart: processStartTime(pgid),
    shimPid: process.pid,
    shimStart: processStartTime(process.pid),
    workerPid: process.ppid,
    workerStart: processStartTime(process.ppid),
    graceMs: cfg.graceMs,
    cgroup: cg,
    ...cfg.record,
    argv,
    at: new Date().toISOString(),
  };
  writeRecord(cfg, record);

  const signalAll = (sig: NodeJS.Signals): void => {
    if (cg) signalCgroup(cg, sig);
    try {
      process.kill(-pgid, sig);
    } catch {
      /* already gone */
    }
  };
  let stopped: 'gone' | 'silent' | 'asked' | null = null;
  const stop = (why: string, kind: 'gone' | 'silent' | 'asked'): void => {
    if (stopped) return;
    stopped = kind;
    if (kind !== 'asked') worker.journal?.markLost(kind);
    say(`${why}: SIGTERM to trainer ${cg ? `cgroup ${path.basename(cg)}` : `group ${pgid}`}, SIGKILL after ${cfg.graceMs} ms`);
    signalAll('SIGTERM');
    setTimeout(() => signalAll('SIGKILL'), cfg.graceMs).unref();
  };

  const worker = wireWorker(cfg, child, (why, kind) => stop(why, kind));
  const capper = setInterval(() => log.check(), LogCap.CHECK_MS);
  const deadman = setInterval(() => {
    if (cfg.heartbeatMs > 0 && Date.now() - worker.lastPing() > cfg.heartbeatMs) stop(`worker silent for ${cfg.heartbeatMs} ms`, 'silent');
  }, 100);
  process.on('SIGTERM', () => stop('SIGTERM from worker', 'asked'));
  process.on('SIGINT', () => stop('SIGINT', 'asked'));
  process.on('SIGHUP', () => stop('SIGHUP', 'asked'));

  child.once('exit', (code, signal) => {
    clearInterval(deadman);
    clearInterval(capper);
    log.check();
    // Whatever the trainer forked (data loader workers, setsid daemons) goes with it.
    signalAll('SIGKILL');
    const status = stopped === 'silent' ? ExitCode.workerLost : (code ?? ExitCode.signalBase + (signal ? (constants.signals[signal] ?? 1) : 1));
    void finish(cg, child, worker.flush, () => {
      // A worker that died or went silent leaves its record behind, so the next worker on this host
      // can fail the attempt at once (pidfiles.ts); otherwise the record goes with the trainer.
      if (stopped === 'gone' || stopped === 'silent') writeRecord(cfg, { ...record, exited: true, exitCode: status });
      else fs.rmSync(cfg.pidfile, { force: true });
      process.exit(status);
    });
  });
}

/** Pipes: trainer fd 3 → worker fd 3 + journal; worker stdin → pings. */
function wireWorker(
  cfg: ShimConfig,
  child: ChildProcess,
  stop: (why: string, kind: 'gone' | 'silent') => void,
): { lastPing: () => number; flush: () => Promise<void>; journal: EventJournal | null } {
  let lastPing = Date.now();
  let workerGone = false;
  let toWorker: net.Socket | null = null;
  try {
    toWorker = new net.Socket({ fd: 3, readable: false, writable: true });
    toWorker.on('error', () => {
      workerGone = true;
    });
  } catch {
    workerGone = true;
  }
  const cwd = process.cwd();
  const journal = cfg.journal
    ? new EventJournal(cfg.journal, leaseOwned(cfg.lease), (p) => (fs.existsSync(p) ? diskBytes(p) : null), (p) => path.resolve(cwd, p))
    : null;
  const events = child.stdio[3] as NodeJS.ReadableStream;
  events.on('data', (chunk: Buffer) => {
    // A frozen worker stops reading: beyond 8 MiB buffered, events are dropped (the journal keeps checkpoints).
    if (!workerGone && toWorker && toWorker.writableLength < 8 * 1024 * 1024) toWorker.write(chunk);
    journal?.feed(chunk);
  });
  events.on('end', () => journal?.end());
  events.on('error', () => undefined);
  child.stdin?.on('error', () => undefined);
  process.stdin.on('data', () => {
    lastPing = Date.now();
  });
  process.stdin.on('end', () => {
    workerGone = true;
    stop('worker went away', 'gone');
  });
  process.stdin.on('error', () => {
    workerGone = true;
    stop('worker pipe broke', 'gone');
  });
  process.stdin.resume();
  const flush = async (): Promise<void> => {
    if (workerGone || !toWorker) return;
    const sock = toWorker;
    await new Promise<void>((r) => {
      sock.end(() => r());
      setTimeout(r, 1000).unref();
    });
  };
  return { lastPing: () => lastPing, flush, journal };
}

/** After the trainer exits: its cgroup emptied and removed, its pipes drained and the last events forwarded, then `done`. */
async function finish(cg: string | null, child: ChildProcess, flush: () => Promise<void>, done: () => void): Promise<void> {
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  if (cg) await killCgroup(cg, 5000);
  // Without a cgroup, a setsid grandchild may hold the trainer's pipes open: wait for them only a second.
  await Promise.race([closed, new Promise((r) => setTimeout(r, cg ? 3000 : 1000))]);
  await flush();
  done();
}

main();
