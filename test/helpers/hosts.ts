/**
 * Several GPU "hosts" on one machine: each GPU worker in its own mount namespace (`unshare -m`, we
 * are root) with a private tmpfs mounted at the same state path, so hosts share no disk; checkpoints
 * go through a real S3-API server (moto, test/helpers/moto.ts). Used by fleet.test.ts,
 * fleetStop.test.ts and bench/overlap.ts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { motoCommand, type MotoServer } from './moto';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export const canUnshare = (): boolean => spawnSync('unshare', ['-m', 'true'], { stdio: 'ignore' }).status === 0;

/** Why a test of separate hosts on S3 cannot run here, or false. */
export function hostsSkipReason(): string | false {
  if (!motoCommand()) return "moto_server not installed (pip install 'moto[server]')";
  if (!canUnshare()) return 'unshare -m is not permitted here (needs root): no separate hosts';
  return false;
}

/** The `wrap` for `startGpuWorker`: a new mount namespace with a private tmpfs at `state`, then exec the worker. */
export function hostWrap(state: string, size = '256m'): string[] {
  return ['unshare', '-m', '--', 'sh', '-c', `mount -t tmpfs -o size=${size} kiln-host "$0" && exec "$@"`, state];
}

export async function createBucket(moto: MotoServer, bucket: string): Promise<void> {
  const admin = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
  try {
    await admin.send(new CreateBucketCommand({ Bucket: bucket }));
  } finally {
    admin.destroy();
  }
}

/** The `storage:` section of temporal.yaml for a bucket on moto. */
export const s3StorageYaml = (bucket: string, prefix: string, endpoint: string): string =>
  `storage:\n  kind: s3\n  bucket: ${bucket}\n  prefix: ${prefix}\n  endpoint: ${endpoint}\n  forcePathStyle: true\n`;

function readProc(pid: number | string, file: string): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return null;
  }
}

/** The one-letter state of a process (`R`, `S`, `T` stopped, `Z` zombie…), or null when it is gone. */
export function procState(pid: number | string): string | null {
  const stat = readProc(pid, 'stat');
  return stat ? stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) : null;
}

/** The mount namespace of a process (`mnt:[4026532…]`): which "host" it runs on; null when it is gone. */
export function mountNamespace(pid: number | string): string | null {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/mnt`);
  } catch {
    return null;
  }
}

/** Processes (not zombies) whose environment contains `needle` (e.g. `KILN_WORK_DIR=<state>`). */
export function processesWithEnv(needle: string, o: { excludeShims?: boolean } = {}): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procState(name);
    if (!st || st === 'Z') continue;
    if (!readProc(name, 'environ')?.includes(needle)) continue;
    if (o.excludeShims && readProc(name, 'cmdline')?.includes('shim.js')) continue;
    out.push(Number(name));
  }
  return out;
}

/** Processes whose work dir lies in the hosts' state path (trainers and shims of any host). */
export const hostProcesses = (state: string): number[] => processesWithEnv(`KILN_WORK_DIR=${state}`);

/** A job's trainer processes on any host (by KILN_JOB_ID in their environment; shims excluded). */
export const jobTrainers = (jobId: string): number[] => processesWithEnv(`KILN_JOB_ID=${jobId}\0`, { excludeShims: true });
