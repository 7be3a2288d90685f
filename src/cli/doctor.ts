/**
 * `kiln doctor`: checks what a working Kiln needs and says how to fix each failure. Every check
 * asks the real thing (the server, the task queues, nvidia-smi, the file system); nothing is assumed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { KilnConfig } from '../config/load';
import { gpuTaskQueue, TASK_QUEUE_CONTROL } from '../shared/messages';
import { ConfigError } from '../shared/errors';
import { KILN_SEARCH_ATTRIBUTES } from '../shared/searchAttributes';
import { configSlots, LIVE_MS, poolUse, type PoolUse } from '../client/pools';
import { detectGpus } from '../supervisor/gpu';
import { connectClient, serverAddress } from '../temporal/connect';
import { bool, parseArgs, str } from './args';
import { checkRegistry, checkStorage } from './doctorBackends';
import { checkConfigDrift, checkTrainerCommands } from './doctorDrift';
import type { CliContext, Verb } from './verb';

import type { Check, CheckStatus } from './doctorCheck';

export type { Check, CheckStatus } from './doctorCheck';

export interface DoctorReport {
  ok: boolean;
  checks: Check[];
}

const { TaskQueueType, IndexedValueType } = temporal.api.enums.v1;

/**
 * A poller the server saw longer ago than this is not live: the server keeps dead pollers for minutes.
 * `kiln dev` runs its server with a 10 s long poll, so an idle live worker re-polls well within it;
 * a busy GPU worker (no free slot, so no poll) is live through its attempts' heartbeats (src/client/pools.ts).
 */
const POLLER_STALE_MS = LIVE_MS;

function tsMs(t: { seconds?: unknown; nanos?: number | null } | null | undefined): number | null {
  if (!t?.seconds) return null;
  return Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

function errText(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!;
}

function checkStateFolder(config: KilnConfig): Check[] {
  const dirs = [
    { id: 'state', title: 'state folder writable', dir: config.home, why: 'server DB, registry, pid files' },
    { id: 'artifacts', title: 'artifacts folder writable', dir: config.artifactsRoot, why: 'checkpoints and trainer logs' },
  ];
  const seen = new Set<string>();
  const out: Check[] = [];
  for (const d of dirs) {
    if (seen.has(d.dir)) continue;
    seen.add(d.dir);
    try {
      fs.mkdirSync(d.dir, { recursive: true });
      const probe = path.join(d.dir, `.kiln-doctor-${process.pid}`);
      fs.writeFileSync(probe, 'ok');
      fs.rmSync(probe);
      out.push({ id: d.id, title: d.title, status: 'ok', detail: `${d.dir} (${d.why})` });
    } catch (err) {
      out.push({
        id: d.id,
        title: d.title,
        status: 'fail',
        detail: `${d.dir}: ${errText(err)}`,
        hint:
          d.id === 'state'
            ? `make ${d.dir} writable by this user, or point KILN_HOME / state.home in ${path.basename(config.file)} at a writable folder`
            : `make ${d.dir} writable, or set artifacts.root in ${path.basename(config.file)}`,
      });
    }
  }
  return out;
}

async function checkGpuSlots(config: KilnConfig): Promise<Check[]> {
  const out: Check[] = [];
  const pools = Object.entries(config.workers.pools);
  const detected = pools.length ? await detectGpus() : [];
  for (const [name, p] of pools) {
    const devices = p.devices === 'auto' ? detected : p.devices.map(String);
    const slots = devices.length > 0 ? devices.length : p.slots;
    const where = p.devices === 'auto' ? (devices.length ? `nvidia-smi on this host found ${devices.length} GPU(s) [${devices.join(', ')}]` : 'no GPU found on this host (nvidia-smi absent or empty): CPU slots') : `pinned devices [${devices.join(', ')}]`;
    const problems: string[] = [];
    const hints: string[] = [];
    for (const [model, m] of Object.entries(config.models)) {
      if (m.pool !== name || devices.length === 0) continue;
      if (m.gpus > devices.length) {
        problems.push(`model ${model} asks for ${m.gpus} GPU(s), the pool has ${devices.length}`);
        hints.push(`lower models.${model}.gpus to at most ${devices.length}, or add devices to workers.pools.${name}`);
      }
    }
    let status: CheckStatus = problems.length ? 'fail' : 'ok';
    if (!problems.length && p.devices !== 'auto' && detected.length) {
      const missing = devices.filter((d) => !detected.includes(d));
      if (missing.length) {
        status = 'warn';
        problems.push(`pinned device(s) ${missing.join(', ')} not reported by nvidia-smi on this host`);
        hints.push(`check workers.pools.${name}.devices against \`nvidia-smi -L\` on the GPU hosts`);
      }
    }
    out.push({
      id: `slots:${name}`,
      title: `GPU slots, pool ${name}`,
      status,
      detail: `${slots} slot(s) per worker; ${where}${problems.length ? `; ${problems.join('; ')}` : ''}`,
      hint: hints.length ? hints.join('; ') : undefined,
    });
  }
  return out;
}

async function checkServer(config: KilnConfig, client: Client): Promise<Check[]> {
  const ns = config.server.namespace;
  const address = serverAddress(config);
  const out: Check[] = [];
  try {
    const d = await client.workflowService.describeNamespace({ namespace: ns });
    out.push({ id: 'namespace', title: 'namespace exists', status: 'ok', detail: `${ns} (retention ${Number(d.config?.workflowExecutionRetentionTtl?.seconds ?? 0) / 86400} d)` });
  } catch (err) {
    out.push({
      id: 'namespace',
      title: 'namespace exists',
      status: 'fail',
      detail: `${ns}: ${errText(err)}`,
      hint: `create it: temporal operator namespace create --namespace ${ns} --address ${address} (or set server.namespace / TEMPORAL_NAMESPACE to an existing one)`,
    });
    return out;
  }
  try {
    const r = await client.connection.operatorService.listSearchAttributes({ namespace: ns });
    const have = r.customAttributes ?? {};
    const missing = KILN_SEARCH_ATTRIBUTES.filter((k) => have[k.name] === undefined).map((k) => k.name);
    const wrongType = KILN_SEARCH_ATTRIBUTES.filter((k) => have[k.name] !== undefined && have[k.name] !== IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD).map((k) => k.name);
    if (!missing.length && !wrongType.length) {
      out.push({ id: 'search-attributes', title: 'search attributes registered', status: 'ok', detail: KILN_SEARCH_ATTRIBUTES.map((k) => `${k.name}=Keyword`).join(', ') });
    } else {
      out.push({
        id: 'search-attributes',
        title: 'search attributes registered',
        status: 'fail',
        detail: [missing.length ? `missing: ${missing.join(', ')}` : '', wrongType.length ? `not Keyword: ${wrongType.join(', ')}` : ''].filter(Boolean).join('; '),
        hint: missing.length
          ? `register them: ${missing.map((n) => `temporal operator search-attribute create --namespace ${ns} --address ${address} --name ${n} --type Keyword`).join(' && ')} (kiln dev does this on start)`
          : `these names are taken with another type in namespace ${ns}; use a namespace of Kiln's own`,
      });
    }
  } catch (err) {
    out.push({ id: 'search-attributes', title: 'search attributes registered', status: 'fail', detail: errText(err), hint: 'the server refused listSearchAttributes: check that this client may use the operator API' });
  }
  return out;
}

async function checkPollers(config: KilnConfig, client: Client, controlQueue: string): Promise<Check[]> {
  const ns = config.server.namespace;
  const fix = 'start the control worker: kiln worker control (or kiln dev, which runs all workers)';
  const parts: string[] = [];
  const missing: string[] = [];
  try {
    for (const [type, label] of [
      [TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, 'workflow'],
      [TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, 'activity'],
    ] as const) {
      const r = await client.workflowService.describeTaskQueue({ namespace: ns, taskQueue: { name: controlQueue, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL }, taskQueueType: type });
      const now = Date.now();
      const pollers = (r.pollers ?? []).map((p) => ({ identity: p.identity ?? '?', at: tsMs(p.lastAccessTime) }));
      const live = pollers.filter((p) => p.at !== null && now - p.at <= POLLER_STALE_MS);
      const gone = pollers.filter((p) => !live.includes(p));
      const goneText = gone.length ? `; not live: ${gone.map((p) => `${p.identity} (last poll ${p.at ? ago(now - p.at) : 'never'})`).join(', ')}` : '';
      if (live.length === 0) missing.push(label);
      parts.push(live.length ? `${label}: ${live.length} poller(s) ${live.map((p) => p.identity).join(', ')}${goneText}` : `${label}: no live poller${goneText}`);
    }
  } catch (err) {
    return [{ id: `pollers:${controlQueue}`, title: `workers polling ${controlQueue}`, status: 'fail', detail: errText(err), hint: 'the server refused describeTaskQueue: check the namespace and permissions' }];
  }
  const out: Check[] = [
    {
      id: `pollers:${controlQueue}`,
      title: `workers polling ${controlQueue}`,
      status: missing.length ? 'fail' : 'ok',
      detail: parts.join('; '),
      hint: missing.length ? `no worker polls ${missing.join(' and ')} tasks on ${controlQueue}: ${fix}` : undefined,
    },
  ];
  for (const pool of Object.keys(config.workers.pools)) out.push(...(await checkPool(config, client, pool)));
  return out;
}

/** A GPU pool: live workers (polled or heartbeating within LIVE_MS), slots busy and free, and each running attempt's worker and heartbeat age. */
async function checkPool(config: KilnConfig, client: Client, pool: string): Promise<Check[]> {
  const queue = gpuTaskQueue(pool);
  let u: PoolUse;
  try {
    u = await poolUse(client, pool, configSlots(config, pool), { namespace: config.server.namespace });
  } catch (err) {
    return [{ id: `pollers:${queue}`, title: `workers polling ${queue}`, status: 'fail', detail: errText(err), hint: 'the server refused describeTaskQueue: check the namespace and permissions' }];
  }
  const live = u.workers.filter((w) => w.live);
  const gone = u.workers.filter((w) => !w.live);
  const seen = (w: PoolUse['workers'][number]) => (w.lastPollAgeSec === null ? 'never polled' : `last poll ${ago(w.lastPollAgeSec * 1000)}`);
  const goneText = gone.length ? `; not live: ${gone.map((w) => `${w.identity} (${seen(w)})`).join(', ')}` : '';
  const free = u.slots === null ? '?' : Math.max(0, u.slots - u.busy);
  const use = `slots: ${u.busy} busy, ${free} free of ${u.slots ?? '?'}`;
  const checks: Check[] = [
    {
      id: `pollers:${queue}`,
      title: `workers polling ${queue}`,
      status: live.length ? 'ok' : 'fail',
      detail: live.length ? `activity: ${live.length} poller(s) ${live.map((w) => `${w.identity} (${w.busy} busy)`).join(', ')}; ${use}${goneText}` : `activity: no live poller${goneText}`,
      hint: live.length ? undefined : `no worker polls activity tasks on ${queue}: start a worker for the pool on a GPU host: kiln worker gpu --pool ${pool} (or kiln dev)`,
    },
  ];
  if (u.attempts.length) {
    const stale = u.attempts.filter((a) => !a.live);
    checks.push({
      id: `running:${pool}`,
      title: `running attempts, pool ${pool}`,
      status: stale.length ? 'warn' : 'ok',
      detail: u.attempts.map((a) => `${a.jobId} ${a.activity} on ${a.worker}, last heartbeat ${a.heartbeatAgeSec === null ? 'never' : `${a.heartbeatAgeSec.toFixed(1)} s ago`}`).join('; '),
      hint: stale.length ? `no heartbeat for over ${LIVE_MS / 1000} s from ${stale.map((a) => a.jobId).join(', ')}: its worker is probably gone; the attempt is retried at its heartbeat timeout (kiln status <job>)` : undefined,
    });
  }
  return checks;
}

export async function runDoctor(loadCfg: () => KilnConfig, o: { controlQueue?: string; connectTimeoutMs?: number } = {}): Promise<DoctorReport> {
  const checks: Check[] = [];
  let config: KilnConfig;
  try {
    config = loadCfg();
    checks.push({
      id: 'config',
      title: 'temporal.yaml valid',
      status: 'ok',
      detail: `${config.file}: ${Object.keys(config.trainers).length} trainer(s), ${Object.keys(config.models).length} model(s), pools [${Object.keys(config.workers.pools).join(', ')}]`,
    });
  } catch (err) {
    const problems = err instanceof ConfigError ? err.problems.join('; ') : errText(err);
    checks.push({ id: 'config', title: 'temporal.yaml valid', status: 'fail', detail: problems, hint: 'fix each listed path (kiln config check shows them one per line), or pass --config / set KILN_CONFIG' });
    checks.push({ id: 'rest', title: 'other checks', status: 'skip', detail: 'they need a valid config' });
    return { ok: false, checks };
  }
  checks.push(...checkStateFolder(config));
  checks.push(...(await checkGpuSlots(config)));
  checks.push(await checkStorage(config));
  checks.push(await checkRegistry(config, { connectTimeoutMs: o.connectTimeoutMs ?? 5000 }));
  checks.push(checkTrainerCommands(config));

  const address = serverAddress(config);
  let client: Client | undefined;
  try {
    client = await connectClient(config, { connectTimeoutMs: o.connectTimeoutMs ?? 5000 });
    await client.workflowService.getSystemInfo({});
    checks.push({ id: 'server', title: 'server reachable', status: 'ok', detail: `${address}${config.server.tls || config.server.apiKey ? ' (TLS)' : ''}` });
  } catch (err) {
    checks.push({
      id: 'server',
      title: 'server reachable',
      status: 'fail',
      detail: `${address}: ${errText(err)}`,
      hint: config.server.address
        ? `check that the cluster at ${address} is up and reachable from here (server.address / TEMPORAL_ADDRESS), and its TLS / API key settings`
        : `start the local stack with kiln dev (it serves ${address}), or set server.address / TEMPORAL_ADDRESS to your cluster`,
    });
    checks.push({ id: 'server-rest', title: 'namespace, search attributes, pollers', status: 'skip', detail: 'they need the server' });
  }
  if (client) {
    try {
      const server = await checkServer(config, client);
      checks.push(...server);
      if (server.some((c) => c.id === 'namespace' && c.status === 'ok')) {
        checks.push(...(await checkPollers(config, client, o.controlQueue ?? TASK_QUEUE_CONTROL)));
        checks.push(await checkConfigDrift(config, client, o.controlQueue ?? TASK_QUEUE_CONTROL));
      }
    } finally {
      await client.connection.close();
    }
  }
  return { ok: !checks.some((c) => c.status === 'fail'), checks };
}

const MARK: Record<CheckStatus, string> = { ok: '[ok]  ', warn: '[warn]', fail: '[FAIL]', skip: '[skip]' };

export function renderDoctor(r: DoctorReport): string {
  const width = Math.max(...r.checks.map((c) => c.title.length));
  const lines: string[] = [];
  for (const c of r.checks) {
    lines.push(`${MARK[c.status]} ${c.title.padEnd(width)}  ${c.detail}`);
    if (c.hint) lines.push(`       ${' '.repeat(width)}  fix: ${c.hint}`);
  }
  const failed = r.checks.filter((c) => c.status === 'fail').length;
  const warned = r.checks.filter((c) => c.status === 'warn').length;
  lines.push('', r.ok ? `all ${r.checks.length} checks passed${warned ? ` (${warned} warning(s))` : ''}` : `${failed} check(s) failed`);
  return lines.join('\n');
}

async function doctor(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' }, 'control-queue': { type: 'string' } }, 'doctor');
  const report = await runDoctor(ctx.config, { controlQueue: str(p, 'control-queue') });
  ctx.out(bool(p, 'json') ? JSON.stringify(report) : renderDoctor(report));
  return report.ok ? 0 : 1;
}

export const doctorVerb: Verb = {
  summary: 'check server, namespace, search attributes, workers, GPU slots, storage, registry, config and state folder',
  usage: `kiln doctor [--json] [--control-queue Q]

Checks, each with a fix hint when it fails:
  temporal.yaml valid; state and artifacts folders writable; GPU slots per pool (config + nvidia-smi);
  object storage (a probe object written, read back, conditional writes refused as they must be,
  deleted); the model registry (SQLite file or registry.url reachable, its schema version);
  server reachable; namespace exists; search attributes KilnModel/KilnPhase/KilnTrigger registered;
  live pollers on ${TASK_QUEUE_CONTROL} (workflow + activity) and on kiln-gpu-<pool> for every pool;
  every trainer and evaluate command can start on this host (fails naming the model);
  every live worker runs temporal.yaml as it is on disk (a warning lists the drifted ones).
Exit code 0 when every check passes (warnings allowed), 1 when any fails.
A worker is live when the server saw it poll within the last ${LIVE_MS / 1000} s, or one of its attempts
heartbeated within that time (a GPU worker with every slot busy does not poll); the server keeps dead
pollers for minutes, doctor lists them as "not live". Per pool: slots busy and free, and every running
attempt with its worker and the age of its last heartbeat. kiln dev runs its server with a 10 s long
poll; on a cluster whose long poll is longer, an idle worker may show as not live between polls.

Examples:
  kiln doctor
  kiln doctor --json | jq '.checks[] | select(.status == "fail")'
  TEMPORAL_ADDRESS=temporal.internal:7233 kiln doctor`,
  run: doctor,
};
