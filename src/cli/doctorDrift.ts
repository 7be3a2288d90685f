/**
 * `kiln doctor` checks of what the workers will run: every trainer command can start on this host
 * (src/config/preflight.ts), and every live worker runs the temporal.yaml that is on disk now
 * (config drift: workers publish `cfg-<hash>/` in their poller identity, workers/common.ts).
 */
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { configFileHash, type KilnConfig } from '../config/load';
import { commandProblems, describeCommandProblem } from '../config/preflight';
import { gpuTaskQueue } from '../shared/messages';

/** The shape of doctor.ts's Check (kept structural, so this file does not import doctor.ts). */
interface DriftCheck {
  id: string;
  title: string;
  status: 'ok' | 'warn' | 'fail' | 'skip';
  detail: string;
  hint?: string;
}

/** A poller last seen longer ago than this is not counted (a live long poll renews within ~70 s). */
const SEEN_MS = 2 * 60_000;

export function checkTrainerCommands(config: KilnConfig): DriftCheck {
  const broken = commandProblems(config);
  const n = Object.keys(config.trainers).length;
  if (!broken.length) return { id: 'trainer-commands', title: 'trainer commands can start', status: 'ok', detail: `${n} trainer(s): every command and evaluate command found on this host` };
  return {
    id: 'trainer-commands',
    title: 'trainer commands can start',
    status: 'fail',
    detail: broken.map(describeCommandProblem).join('; '),
    hint: `fix each command in ${config.file} (or install what it needs on this host); jobs of these models would fail, and a GPU worker with one refuses to start`,
  };
}

/** `cfg-<hash>/<workerId>` → its parts; a worker of an older Kiln has no hash. */
export function parseIdentity(identity: string): { hash: string | null; worker: string } {
  const m = /^cfg-([0-9a-f]{12})\/(.*)$/.exec(identity);
  return m ? { hash: m[1]!, worker: m[2]! } : { hash: null, worker: identity };
}

async function livePollers(config: KilnConfig, client: Client, controlQueue: string): Promise<Map<string, string>> {
  const { TaskQueueType, TaskQueueKind } = temporal.api.enums.v1;
  const queries: Array<[string, number]> = [
    [controlQueue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW],
    [controlQueue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
    ...Object.keys(config.workers.pools).map((p): [string, number] => [gpuTaskQueue(p), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY]),
  ];
  const seen = new Map<string, string>();
  const now = Date.now();
  for (const [name, type] of queries) {
    const r = await client.workflowService.describeTaskQueue({ namespace: config.server.namespace, taskQueue: { name, kind: TaskQueueKind.TASK_QUEUE_KIND_NORMAL }, taskQueueType: type });
    for (const p of r.pollers ?? []) {
      const at = p.lastAccessTime?.seconds ? Number(p.lastAccessTime.seconds) * 1000 : null;
      if (p.identity && (at === null || now - at < SEEN_MS)) seen.set(p.identity, name);
    }
  }
  return seen;
}

/** Live workers whose config hash differs from the file on disk: they would refuse (WorkerConfigMismatch) jobs submitted now. */
export async function checkConfigDrift(config: KilnConfig, client: Client, controlQueue: string): Promise<DriftCheck> {
  const base = { id: 'config-drift', title: 'workers run the config on disk' };
  const disk = configFileHash(config.file) ?? config.hash;
  let pollers: Map<string, string>;
  try {
    pollers = await livePollers(config, client, controlQueue);
  } catch (err) {
    return { ...base, status: 'skip', detail: `cannot list the workers: ${String((err as Error)?.message ?? err).split('\n')[0]}` };
  }
  const drifted: string[] = [];
  const unknown: string[] = [];
  let same = 0;
  for (const [identity, queue] of pollers) {
    const { hash, worker } = parseIdentity(identity);
    if (hash === null) unknown.push(`${worker} on ${queue}`);
    else if (hash !== disk) drifted.push(`${worker} on ${queue} runs config ${hash}`);
    else same += 1;
  }
  const extra = unknown.length ? `; config not published by ${unknown.join(', ')}` : '';
  if (!drifted.length) return { ...base, status: 'ok', detail: `${same} live worker(s) run ${config.file} as it is on disk (config ${disk})${extra}` };
  return {
    ...base,
    status: 'warn',
    detail: `${config.file} on disk is config ${disk}, but ${drifted.join(', ')}: jobs of a model whose models:/trainers: entry, retention or timeouts changed are refused by them (WorkerConfigMismatch); other sections may differ per host${extra}`,
    hint: 'restart those workers so they load the file (kiln dev: restart it; systemd: systemctl restart the kiln-worker units), or put the file back as they loaded it',
  };
}
