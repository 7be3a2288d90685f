/**
 * Starts a trainer under the shim and turns its fd-3 event stream (forwarded by the shim) into typed
 * events (protocol.ts). Malformed lines are counted and logged, never fatal; an error while handling an
 * event (a full disk, EIO) goes to `onError` and never reaches the worker's event loop. The shim is
 * pinged every PING_MS: a worker that stops pinging (frozen, blocked) gets its trainer stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { probeCgroups, signalCgroup } from './cgroup';
import { EVENTS_FD, ExitCode, MAX_EVENT_LINE, parseEventLine, type TrainerEvent } from './protocol';
import type { ShimConfig } from './shim';

const PING_MS = 250;

export interface TrainerHandle {
  readonly child: ChildProcess;
  /** Resolves with the trainer's exit code (128+n for death by signal n). */
  readonly exited: Promise<number>;
  /** SIGTERM to the trainer's group (through the shim), SIGKILL after graceMs; resolves on exit. */
  stop(graceMs: number): Promise<number>;
  /** SIGKILL the trainer's group now. */
  kill(): void;
}

export interface StartOptions {
  argv: string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  logFile: string;
  pidfile: string;
  graceMs: number;
  /** The shim stops the trainer when this worker has not pinged for this long. */
  heartbeatMs: number;
  /** trainer.log cap: rotated past maxBytes, `keep` files in all. */
  logCap: { maxBytes: number; keep: number };
  /** The attempt's journal of checkpoint events and the lease that fences it; none for evaluation. */
  journal?: { file: string; leaseFile: string; leaseToken: string };
  /** Recorded in the pid file for a worker that starts after this one died. */
  record: ShimConfig['record'];
  onEvent: (e: TrainerEvent) => void;
  onMalformed: (line: string, why: string) => void;
  /** An error thrown while handling an event; the trainer keeps running until the caller stops it. */
  onError: (err: unknown) => void;
}

const SHIM_PATH = path.join(__dirname, 'shim.js');

export function startTrainer(o: StartOptions): TrainerHandle {
  fs.mkdirSync(path.dirname(o.pidfile), { recursive: true });
  const cfg: ShimConfig = {
    pidfile: o.pidfile,
    graceMs: o.graceMs,
    heartbeatMs: o.heartbeatMs,
    logFile: o.logFile,
    logMaxBytes: o.logCap.maxBytes,
    logKeep: o.logCap.keep,
    journal: o.journal?.file ?? '',
    lease: o.journal ? { file: o.journal.leaseFile, token: o.journal.leaseToken } : null,
    cgroupParent: probeCgroups().parent,
    cgroupName: `kiln-${o.record.jobId}-a${o.record.attempt}-${Date.now().toString(36)}`,
    record: o.record,
  };
  // The shim's own stdout/stderr (a crash of the shim itself) go to the log; the trainer's go through the shim.
  const log = fs.openSync(o.logFile, 'a');
  const child = spawn(process.execPath, [SHIM_PATH, JSON.stringify(cfg), '--', ...o.argv], {
    cwd: o.cwd,
    env: o.env,
    stdio: ['pipe', log, log, 'pipe'],
  });
  fs.closeSync(log);
  child.stdin?.on('error', () => undefined);
  const pinger = setInterval(() => {
    if (child.stdin?.writable) child.stdin.write('.');
  }, PING_MS);

  const reader = readEvents(child.stdio[EVENTS_FD] as NodeJS.ReadableStream, o);

  const exited = new Promise<number>((resolve) => {
    const done = (code: number) => {
      clearInterval(pinger);
      reader.flush();
      resolve(code);
    };
    // 'close' comes once the events the shim forwarded last were read; 'exit' alone may come before.
    child.once('exit', (code, signal) => {
      const status = code ?? (signal ? ExitCode.signalBase + 9 : 1);
      const late = setTimeout(() => done(status), 2000);
      child.once('close', () => {
        clearTimeout(late);
        done(status);
      });
    });
    child.once('error', () => done(ExitCode.cannotStart));
  });

  const kill = () => {
    try {
      const rec = JSON.parse(fs.readFileSync(o.pidfile, 'utf8')) as { trainerPid: number; cgroup?: string | null };
      if (rec.cgroup) signalCgroup(rec.cgroup, 'SIGKILL');
      process.kill(-rec.trainerPid, 'SIGKILL');
    } catch {
      /* no pidfile yet or gone */
    }
    try {
      child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  };
  const stop = async (graceMs: number): Promise<number> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(kill, graceMs + 500);
      const code = await exited;
      clearTimeout(timer);
      return code;
    }
    return exited;
  };
  return { child, exited, stop, kill };
}

/** Splits the forwarded fd-3 stream into lines, bounded (an endless line is dropped, not buffered). */
function readEvents(events: NodeJS.ReadableStream, o: StartOptions): { flush: () => void } {
  let buf = '';
  let dropping = false;
  const handleLine = (line: string) => {
    if (!line.trim()) return;
    const r = parseEventLine(line);
    try {
      if ('event' in r) o.onEvent(r.event);
      else o.onMalformed(line, r.malformed);
    } catch (err) {
      o.onError(err);
    }
  };
  events.setEncoding('utf8');
  events.on('data', (chunk: string) => {
    buf += chunk;
    // One pass with an index and one slice at the end: slicing the buffer per line copied the rest of
    // the chunk for every line, quadratic in a flood of short lines.
    let from = 0;
    let nl: number;
    while ((nl = buf.indexOf('\n', from)) >= 0) {
      const line = buf.slice(from, nl);
      from = nl + 1;
      if (dropping) {
        dropping = false;
        continue;
      }
      if (line.length > MAX_EVENT_LINE) o.onMalformed(line.slice(0, 200), `line longer than ${MAX_EVENT_LINE} bytes`);
      else handleLine(line);
    }
    buf = from ? buf.slice(from) : buf;
    if (buf.length > MAX_EVENT_LINE) {
      // An endless line: drop it up to its newline instead of buffering without bound.
      o.onMalformed(buf.slice(0, 200), `line longer than ${MAX_EVENT_LINE} bytes`);
      buf = '';
      dropping = true;
    }
  });
  events.on('error', () => undefined);

  return {
    flush: () => {
      if (buf && !dropping) handleLine(buf);
      buf = '';
    },
  };
}
