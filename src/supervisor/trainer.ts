/**
 * Starts a trainer under the shim and turns its fd-3 event stream into typed events (protocol.ts).
 * Malformed lines are counted and logged, never fatal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EVENTS_FD, ExitCode, MAX_EVENT_LINE, parseEventLine, type TrainerEvent } from './protocol';

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
  onEvent: (e: TrainerEvent) => void;
  onMalformed: (line: string, why: string) => void;
}

const SHIM_PATH = path.join(__dirname, 'shim.js');

export function startTrainer(o: StartOptions): TrainerHandle {
  fs.mkdirSync(path.dirname(o.pidfile), { recursive: true });
  const log = fs.openSync(o.logFile, 'a');
  const child = spawn(process.execPath, [SHIM_PATH, o.pidfile, String(o.graceMs), '--', ...o.argv], {
    cwd: o.cwd,
    env: o.env,
    stdio: ['pipe', log, log, 'pipe'],
  });
  fs.closeSync(log);
  child.stdin?.on('error', () => undefined);

  let buf = '';
  let dropping = false;
  const events = child.stdio[EVENTS_FD] as NodeJS.ReadableStream;
  const handleLine = (line: string) => {
    if (!line.trim()) return;
    const r = parseEventLine(line);
    if ('event' in r) o.onEvent(r.event);
    else o.onMalformed(line, r.malformed);
  };
  events.setEncoding('utf8');
  events.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (dropping) {
        dropping = false;
        continue;
      }
      if (line.length > MAX_EVENT_LINE) o.onMalformed(line.slice(0, 200), `line longer than ${MAX_EVENT_LINE} bytes`);
      else handleLine(line);
    }
    if (buf.length > MAX_EVENT_LINE) {
      // An endless line: drop it up to its newline instead of buffering without bound.
      o.onMalformed(buf.slice(0, 200), `line longer than ${MAX_EVENT_LINE} bytes`);
      buf = '';
      dropping = true;
    }
  });
  events.on('error', () => undefined);

  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => {
      if (buf && !dropping) handleLine(buf);
      buf = '';
      resolve(code ?? (signal ? ExitCode.signalBase + 9 : 1));
    });
    child.once('error', () => resolve(ExitCode.cannotStart));
  });

  const kill = () => {
    try {
      const rec = JSON.parse(fs.readFileSync(o.pidfile, 'utf8')) as { trainerPid: number };
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
