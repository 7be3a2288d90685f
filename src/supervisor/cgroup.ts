/**
 * A cgroup v2 per trainer, where the host lets us write one: everything the trainer starts, double
 * forked and `setsid` children included, stays in it, and `cgroup.kill` ends them all at once. The
 * parent is `KILN_CGROUP_PARENT` (a cgroup2 path) or the worker's own cgroup; `KILN_CGROUP=off` turns
 * it off. Where nothing is writable, trainers fall back to their process group. No imports beyond
 * node: the shim loads this module.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The cgroup2 mount point, from /proc/self/mountinfo, or null. */
function cgroup2Mount(): string | null {
  try {
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const [pre, post] = line.split(' - ');
      if (post?.startsWith('cgroup2 ')) return pre!.split(' ')[4] ?? null;
    }
  } catch {
    /* not Linux */
  }
  return null;
}

/** This process's cgroup2 directory, or null. */
function ownCgroup(): string | null {
  const mount = cgroup2Mount();
  if (!mount) return null;
  try {
    const line = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'));
    return line ? path.join(mount, line.slice(3)) : null;
  } catch {
    return null;
  }
}

export type CgroupProbe = { parent: string } | { parent: null; why: string };

let probed: CgroupProbe | null = null;

/** Where trainer cgroups go on this host, tested once by creating and removing one. */
export function probeCgroups(env: NodeJS.ProcessEnv = process.env): CgroupProbe {
  if (probed) return probed;
  if (env.KILN_CGROUP === 'off') return (probed = { parent: null, why: 'KILN_CGROUP=off' });
  const parent = env.KILN_CGROUP_PARENT || ownCgroup();
  if (!parent) return (probed = { parent: null, why: 'no cgroup v2 hierarchy mounted' });
  const test = path.join(parent, `kiln-probe-${process.pid}`);
  try {
    fs.mkdirSync(test);
    const killable = fs.existsSync(path.join(test, 'cgroup.kill'));
    fs.rmdirSync(test);
    probed = killable ? { parent } : { parent: null, why: `${parent} has no cgroup.kill (kernel older than 5.14)` };
  } catch (err) {
    probed = { parent: null, why: `cannot create a cgroup under ${parent}: ${(err as Error).message}` };
  }
  return probed;
}

/** Creates the trainer's cgroup under `parent`; null if that fails. */
export function createCgroup(parent: string, name: string): string | null {
  const dir = path.join(parent, name.replace(/[^A-Za-z0-9._-]/g, '_'));
  try {
    fs.mkdirSync(dir);
    return dir;
  } catch {
    return null;
  }
}

export function cgroupPids(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Sends `sig` to every process in the cgroup (SIGKILL goes through cgroup.kill, race-free). */
export function signalCgroup(dir: string, sig: NodeJS.Signals): void {
  if (sig === 'SIGKILL') {
    try {
      fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
      return;
    } catch {
      /* gone, or no cgroup.kill: signal one by one */
    }
  }
  for (const pid of cgroupPids(dir)) {
    try {
      process.kill(pid, sig);
    } catch {
      /* exited meanwhile */
    }
  }
}

/** SIGKILLs everything in the cgroup, waits until it is empty (at most `waitMs`) and removes it. */
export async function killCgroup(dir: string, waitMs = 5000): Promise<void> {
  if (!fs.existsSync(dir)) return;
  signalCgroup(dir, 'SIGKILL');
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline && cgroupPids(dir).length > 0) await new Promise((r) => setTimeout(r, 20));
  try {
    fs.rmdirSync(dir);
  } catch {
    /* not empty yet or already removed */
  }
}

/**
 * Removes empty trainer cgroups (`kiln-*`) under `parent` older than `minAgeMs`: ones whose last
 * process was a zombie when its shim or reaper tried to remove them. A populated one cannot be removed.
 */
export function sweepEmptyCgroups(parent: string, minAgeMs = 60_000): number {
  let removed = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(parent).filter((n) => n.startsWith('kiln-'));
  } catch {
    return 0;
  }
  for (const n of names) {
    const dir = path.join(parent, n);
    try {
      if (Date.now() - fs.statSync(dir).mtimeMs < minAgeMs || cgroupPids(dir).length > 0) continue;
      fs.rmdirSync(dir);
      removed += 1;
    } catch {
      /* populated, or not ours to remove */
    }
  }
  return removed;
}
