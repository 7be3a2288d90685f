/**
 * `promotion.onPromote`: once per production change of a model (promotion, approval, manual
 * promote, rollback), either an argv run without a shell, or a signal sent to a named workflow
 * (`{ signal: { workflowId, name } }`) whose one argument is a PromotionSignal. Idempotent by
 * stage-change id: the registry records in promotion_hooks that the hook ran for (model, version,
 * change), so a retried activity or a repeated CLI call finds it recorded and does not run it again.
 * The record is written after the command exits 0 or the server accepted the signal: a process
 * killed in between may run a command once more (KILN_STAGE_CHANGE_ID lets a hook recognise that),
 * while a signal is sent again with the same request id, which the server drops for the same run
 * (and its payload carries the change id, for a receiver that continued as new in between).
 */
import { spawn } from 'node:child_process';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { pathToFileURL } from 'node:url';
import * as path from 'node:path';
import { resolveCommand, type KilnConfig } from '../config/load';
import type { OnPromoteConfig } from '../config/schema';
import type { ModelRegistry, ModelVersion, ProductionChange } from './types';

/** A hook must finish well inside the registry activity's 30 s start-to-close timeout. */
export const ON_PROMOTE_TIMEOUT_MS = 20_000;

/** Where a version's model artifact is, as a URI: a stored URI as is, a local path as file://. */
export function modelUri(v: Pick<ModelVersion, 'artifactPath'>): string {
  const p = v.artifactPath;
  if (!p) return '';
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(p)) return p;
  return pathToFileURL(path.resolve(p)).href;
}

/** The env a consumer command gets (onPromote and `kiln models watch --exec`). */
export function modelEnv(v: ModelVersion): Record<string, string> {
  return { KILN_MODEL: v.model, KILN_VERSION: String(v.version), KILN_MODEL_URI: modelUri(v), KILN_STAGE: v.stage };
}

export interface CommandResult {
  code: number | null;
  signal: string | null;
  error: string | null;
  tail: string;
}

/** Runs argv without a shell, output kept (last 2 KiB) for messages. */
export function runArgv(argv: readonly string[], env: Record<string, string>, o: { cwd: string; timeoutMs: number; inherit?: boolean }): Promise<CommandResult> {
  return new Promise((resolve) => {
    let tail = '';
    const keep = (b: Buffer) => {
      tail = (tail + b.toString('utf8')).slice(-2048);
    };
    const child = spawn(argv[0]!, argv.slice(1), { cwd: o.cwd, env: { ...process.env, ...env }, stdio: o.inherit ? 'inherit' : ['ignore', 'pipe', 'pipe'], timeout: o.timeoutMs, killSignal: 'SIGKILL' });
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let error: string | null = null;
    child.on('error', (e) => (error = e.message));
    child.on('close', (code, signal) => resolve({ code, signal, error, tail: tail.trim() }));
  });
}

export function describeFailure(r: CommandResult, timeoutMs: number): string {
  if (r.error) return r.error;
  if (r.signal === 'SIGKILL') return `killed (no exit within ${timeoutMs / 1000}s, or SIGKILL)`;
  if (r.signal) return `killed by ${r.signal}`;
  return `exit ${r.code}${r.tail ? `: ${r.tail.split('\n').slice(-3).join(' | ')}` : ''}`;
}

export interface HookOutcome {
  /** What happened, in words, for logs and the job's summary; null when no hook is configured. */
  line: string | null;
  ran: boolean;
}

/** The one argument of a `promotion.onPromote.signal` (docs/registry.md shows a receiver). */
export interface PromotionSignal {
  model: string;
  version: number;
  stage: 'production';
  /** The model artifact: file://…, or the stored URI; '' when the version has none. */
  uri: string;
  /** The stage-change id: the same for every delivery of one change, a receiver's dedupe key. */
  changeId: number;
  /** When the change was made (ISO 8601). */
  at: string;
}

/** Gives `fn` a connected client: the worker's own, or one the CLI opens for the call. */
export type WithTemporal = <T>(fn: (client: Client) => Promise<T>) => Promise<T>;

/** The request id the server deduplicates a change's signal by (per workflow run). */
export const signalRequestId = (c: Pick<ProductionChange, 'model' | 'version' | 'id' | 'at'>): string => `kiln-onpromote:${c.model}:v${c.version}:change-${c.id}:${c.at}`;

/**
 * Sends the change's signal through the service directly (not a workflow handle) so its request id
 * is the change's: a retry after a kill between the send and the record is dropped by the server.
 */
export async function sendPromotionSignal(client: Client, target: { workflowId: string; name: string }, change: ProductionChange, v: ModelVersion): Promise<void> {
  const payload: PromotionSignal = { model: change.model, version: change.version, stage: 'production', uri: modelUri(v), changeId: change.id, at: change.at };
  await client.workflowService.signalWorkflowExecution({
    namespace: client.options.namespace,
    workflowExecution: { workflowId: target.workflowId },
    signalName: target.name,
    identity: client.options.identity,
    requestId: signalRequestId(change),
    input: { payloads: [defaultPayloadConverter.toPayload(payload)] },
  });
}

function signalError(err: unknown, target: { workflowId: string; name: string }): string {
  const e = err as { code?: number; details?: string; message?: string };
  // gRPC status 5: NOT_FOUND (no running workflow with that id).
  if (e.code === 5) return `no running workflow ${target.workflowId} in this namespace (start the receiver, or fix promotion.onPromote.signal.workflowId)`;
  return (e.details ?? e.message ?? String(err)).split('\n')[0]!;
}

async function runSignalHook(hook: { workflowId: string; name: string }, change: ProductionChange, v: ModelVersion, withTemporal: WithTemporal | undefined): Promise<string> {
  const what = `onPromote signal ${hook.name} to workflow ${hook.workflowId} for ${change.model} v${change.version} (change ${change.id})`;
  if (!withTemporal) throw new Error(`${what} cannot be sent: no Temporal connection here; the promotion stands, the signal is retried`);
  try {
    await withTemporal((client) => sendPromotionSignal(client, hook, change, v));
  } catch (err) {
    throw new Error(`${what} failed: ${signalError(err, hook)}; the promotion stands, the signal is retried`);
  }
  return `${what} sent`;
}

async function runArgvHook(config: KilnConfig, argv: readonly string[], change: ProductionChange, v: ModelVersion): Promise<string> {
  const env = { ...modelEnv(v), KILN_STAGE: 'production', KILN_STAGE_CHANGE_ID: String(change.id) };
  const r = await runArgv(resolveCommand(config, argv), env, { cwd: config.baseDir, timeoutMs: ON_PROMOTE_TIMEOUT_MS });
  if (r.code !== 0) {
    throw new Error(`onPromote hook for ${change.model} v${change.version} (change ${change.id}) failed: ${JSON.stringify(argv)} ${describeFailure(r, ON_PROMOTE_TIMEOUT_MS)}; the promotion stands, the hook is retried`);
  }
  return `onPromote ran for ${change.model} v${change.version} (change ${change.id})`;
}

/**
 * Runs the model's onPromote hook (argv or signal) for the change that made (model, version)
 * production, unless it already ran for that change. Throws an Error naming the command or signal
 * and the cause when it fails (the caller retries; nothing is recorded, and the promotion itself is
 * not repeated). `withTemporal` is how a signal hook reaches the server.
 */
export async function runOnPromote(config: KilnConfig, reg: ModelRegistry, model: string, version: number, by: string, withTemporal?: WithTemporal): Promise<HookOutcome> {
  const hook: OnPromoteConfig | undefined = config.models[model]?.promotion?.onPromote;
  if (!hook) return { line: null, ran: false };
  const change = await reg.productionChange(model, version);
  const v = await reg.get(model, version);
  if (!change || !v) return { line: `onPromote: ${model} v${version} was never production; nothing to run`, ran: false };
  if (change.hookRan) return { line: `onPromote for ${model} v${version} (change ${change.id}) already ran`, ran: false };
  const line = Array.isArray(hook) ? await runArgvHook(config, hook, change, v) : await runSignalHook(hook.signal, change, v, withTemporal);
  await reg.recordHookRun(change, by);
  return { line, ran: true };
}
