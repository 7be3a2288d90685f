/**
 * The supervisor shim between a GPU worker and its trainer:
 *
 *   worker ──stdin pipe──▶ shim ──spawn (own process group)──▶ trainer
 *
 * The trainer runs in its own process group, so one signal reaches it and everything it forked.
 * When the worker dies, even by SIGKILL, the kernel closes the worker's end of our stdin: on EOF we
 * SIGTERM the group, wait the grace period, SIGKILL it, and exit. So a dead worker never leaves a
 * trainer behind (seed 004). The trainer's own stdin is a pipe from us, closed if we die.
 *
 * Usage: node shim.js <pidfile> <graceMs> -- <argv...>
 * Exit code: the trainer's, or 128+signal if it died by a signal.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { constants } from 'node:os';
import { ExitCode } from './exitCodes';
import { processStartTime } from './proc';

function main(): void {
  const sep = process.argv.indexOf('--');
  const [pidfile, graceArg] = process.argv.slice(2, sep);
  const argv = process.argv.slice(sep + 1);
  if (sep < 0 || !pidfile || !graceArg || argv.length === 0) {
    process.stderr.write('kiln shim: usage: shim <pidfile> <graceMs> -- <argv...>\n');
    process.exit(ExitCode.shimUsage);
  }
  const graceMs = Number(graceArg);
  let child;
  try {
    child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'inherit', 'inherit', 3], detached: true, env: process.env });
  } catch (err) {
    process.stderr.write(`kiln shim: cannot start trainer ${JSON.stringify(argv[0])}: ${String(err)}\n`);
    process.exit(ExitCode.cannotStart);
  }
  child.stdin?.on('error', () => undefined);
  let spawnFailed = false;
  child.once('error', (err) => {
    spawnFailed = true;
    process.stderr.write(`kiln shim: cannot start trainer ${JSON.stringify(argv[0])}: ${err.message}\n`);
    process.exit(ExitCode.cannotStart);
  });
  const pgid = child.pid!;
  if (pgid) {
    const record = {
      trainerPid: pgid,
      trainerStart: processStartTime(pgid),
      shimPid: process.pid,
      workerPid: process.ppid,
      workerStart: processStartTime(process.ppid),
      argv,
      at: new Date().toISOString(),
    };
    fs.writeFileSync(`${pidfile}.tmp`, JSON.stringify(record));
    fs.renameSync(`${pidfile}.tmp`, pidfile);
  }

  const killGroup = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-pgid, sig);
    } catch {
      /* already gone */
    }
  };
  let stopping = false;
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`kiln shim: ${why}: SIGTERM to trainer group ${pgid}, SIGKILL after ${graceMs} ms\n`);
    killGroup('SIGTERM');
    setTimeout(() => killGroup('SIGKILL'), graceMs).unref();
  };

  // Worker gone (EOF or error on our stdin) → stop the trainer.
  process.stdin.on('end', () => stop('worker went away'));
  process.stdin.on('error', () => stop('worker pipe broke'));
  process.stdin.resume();
  process.on('SIGTERM', () => stop('SIGTERM from worker'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => stop('SIGHUP'));

  child.once('exit', (code, signal) => {
    if (spawnFailed) return;
    // Whatever the trainer forked (data loader workers, …) goes with it.
    killGroup('SIGKILL');
    try {
      fs.unlinkSync(pidfile);
    } catch {
      /* the worker may have removed it */
    }
    const status = code ?? ExitCode.signalBase + (signal ? (constants.signals[signal] ?? 1) : 1);
    process.exit(status);
  });
}

main();
