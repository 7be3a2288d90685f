/**
 * Pid files of running trainers, one per job, under <state>/run/<host>/, written by the shim. A worker
 * starting up stops trainers whose worker is gone (seed 004: an orphaned trainer nobody managed) and
 * hands back their attempts' task tokens, so it can fail those attempts at once; an attempt starting
 * up kills a live trainer of an earlier attempt of the same job. Identity is pid + start time.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { killCgroup } from './cgroup';
import { groupMembers, isSameProcess } from './proc';

export interface PidRecord {
  trainerPid: number;
  trainerStart: number | null;
  shimPid: number;
  shimStart?: number | null;
  workerPid: number;
  workerStart: number | null;
  graceMs?: number;
  /** The trainer's cgroup, or null where it runs in its process group only. */
  cgroup?: string | null;
  jobId?: string;
  attempt?: number;
  /** The attempt's activity task token (base64), to fail it at once after its worker died. */
  taskToken?: string | null;
  /** Set by a shim whose worker had gone when the trainer exited. */
  exited?: boolean;
  exitCode?: number;
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
  const hadCgroup = !!rec.cgroup && fs.existsSync(rec.cgroup);
  const killed = await killProcessGroup(rec, graceMs);
  // The cgroup holds what escaped the group (setsid, double fork).
  if (hadCgroup) await killCgroup(rec.cgroup!);
  return killed || hadCgroup;
}

async function killProcessGroup(rec: PidRecord, graceMs: number): Promise<boolean> {
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

/** Waits until the shim exits by itself (it is stopping its trainer, which may checkpoint). */
async function waitForShim(rec: PidRecord): Promise<void> {
  if (rec.shimStart === undefined) return;
  const deadline = Date.now() + (rec.graceMs ?? 10_000) + 3000;
  while (Date.now() < deadline && isSameProcess(rec.shimPid, rec.shimStart)) await new Promise((r) => setTimeout(r, 50));
}

/**
 * At worker start: stop trainers whose recorded worker is no longer alive (giving a live shim its
 * grace period first, so a trainer that checkpoints on SIGTERM gets it journaled), and return their
 * records: `killed` the trainers this call had to kill, `lost` every dead worker's attempt (for its
 * task token). Trainers of other live workers on this host are left alone.
 */
export async function reapOrphans(home: string, log: (msg: string, extra: object) => void): Promise<{ killed: PidRecord[]; lost: PidRecord[] }> {
  const dir = pidDir(home);
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return { killed: [], lost: [] };
  }
  const records = names.map((n) => ({ file: path.join(dir, n), rec: readPidfile(path.join(dir, n)) }));
  const dead = records.filter(({ file, rec }) => {
    if (rec) return !isSameProcess(rec.workerPid, rec.workerStart);
    fs.rmSync(file, { force: true });
    return false;
  });
  await Promise.all(dead.map(({ rec }) => waitForShim(rec!)));
  const killed: PidRecord[] = [];
  for (const { file, rec } of dead) {
    if (await killRecordedTrainer(rec!)) {
      killed.push(rec!);
      log('killed orphaned trainer left by a dead worker', { file, trainerPid: rec!.trainerPid, workerPid: rec!.workerPid });
    }
    fs.rmSync(file, { force: true });
  }
  return { killed, lost: dead.map((d) => d.rec!) };
}
