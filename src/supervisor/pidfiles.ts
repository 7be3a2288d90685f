/**
 * Pid files of running trainers, one per job, under <state>/run/<host>/. A worker starting up kills
 * trainers whose worker is gone (seed 004: an orphaned trainer nobody managed), and an attempt
 * starting up kills a live trainer of an earlier attempt of the same job. Identity is pid + start time.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { groupMembers, isSameProcess } from './proc';

export interface PidRecord {
  trainerPid: number;
  trainerStart: number | null;
  shimPid: number;
  workerPid: number;
  workerStart: number | null;
  argv: string[];
  at: string;
}

export function pidDir(home: string): string {
  return path.join(home, 'run', os.hostname());
}

export function pidfileFor(home: string, jobId: string): string {
  return path.join(pidDir(home), `${jobId}.json`);
}

export function readPidfile(file: string): PidRecord | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as PidRecord;
  } catch {
    return null;
  }
}

/** SIGKILLs a trainer's process group if the record still names a live process. */
export async function killRecordedTrainer(rec: PidRecord, graceMs = 0): Promise<boolean> {
  if (!isSameProcess(rec.trainerPid, rec.trainerStart)) {
    // The leader is gone; stragglers of its group may still run.
    const rest = groupMembers(rec.trainerPid);
    for (const pid of rest) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    return rest.length > 0;
  }
  const send = (sig: NodeJS.Signals) => {
    try {
      process.kill(-rec.trainerPid, sig);
    } catch {
      /* gone */
    }
  };
  if (graceMs > 0) {
    send('SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && isSameProcess(rec.trainerPid, rec.trainerStart)) await new Promise((r) => setTimeout(r, 100));
  }
  send('SIGKILL');
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && groupMembers(rec.trainerPid).length > 0) await new Promise((r) => setTimeout(r, 50));
  return true;
}

/**
 * At worker start: kill trainers whose recorded worker is no longer alive. Returns what it killed.
 * Trainers of other live workers on this host are left alone.
 */
export async function reapOrphans(home: string, log: (msg: string, extra: object) => void): Promise<PidRecord[]> {
  const dir = pidDir(home);
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  const killed: PidRecord[] = [];
  for (const n of names) {
    const file = path.join(dir, n);
    const rec = readPidfile(file);
    if (!rec) {
      fs.rmSync(file, { force: true });
      continue;
    }
    const workerAlive = isSameProcess(rec.workerPid, rec.workerStart) || isSameProcess(rec.shimPid, null);
    if (workerAlive && isSameProcess(rec.workerPid, rec.workerStart)) continue;
    if (await killRecordedTrainer(rec)) {
      killed.push(rec);
      log('killed orphaned trainer left by a dead worker', { file, trainerPid: rec.trainerPid, workerPid: rec.workerPid });
    }
    fs.rmSync(file, { force: true });
  }
  return killed;
}
