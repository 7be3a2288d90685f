/**
 * `promotion.onPromote`: an argv (no shell) run once per production change of a model (promotion,
 * approval, manual promote, rollback). Idempotent by stage-change id: the registry records in
 * promotion_hooks that the hook ran for (model, version, change), so a retried activity or a repeated
 * CLI call finds it recorded and does not run it again. The record is written after the command
 * exits 0: a process killed while the hook itself runs may run it once more (KILN_STAGE_CHANGE_ID
 * lets a hook recognise that).
 */
import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import * as path from 'node:path';
import { resolveCommand, type KilnConfig } from '../config/load';
import type { ModelRegistry, ModelVersion } from './types';

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

/**
 * Runs the model's onPromote hook for the change that made (model, version) production, unless it
 * already ran for that change. Throws an Error naming the command and cause when the hook fails
 * (the caller retries; nothing is recorded, and the promotion itself is not repeated).
 */
export async function runOnPromote(config: KilnConfig, reg: ModelRegistry, model: string, version: number, by: string): Promise<HookOutcome> {
  const argv = config.models[model]?.promotion?.onPromote;
  if (!argv?.length) return { line: null, ran: false };
  const change = await reg.productionChange(model, version);
  const v = await reg.get(model, version);
  if (!change || !v) return { line: `onPromote: ${model} v${version} was never production; nothing to run`, ran: false };
  if (change.hookRan) return { line: `onPromote for ${model} v${version} (change ${change.id}) already ran`, ran: false };
  const env = { ...modelEnv(v), KILN_STAGE: 'production', KILN_STAGE_CHANGE_ID: String(change.id) };
  const r = await runArgv(resolveCommand(config, argv), env, { cwd: config.baseDir, timeoutMs: ON_PROMOTE_TIMEOUT_MS });
  if (r.code !== 0) {
    throw new Error(`onPromote hook for ${model} v${version} (change ${change.id}) failed: ${JSON.stringify(argv)} ${describeFailure(r, ON_PROMOTE_TIMEOUT_MS)}; the promotion stands, the hook is retried`);
  }
  await reg.recordHookRun(change, by);
  return { line: `onPromote ran for ${model} v${version} (change ${change.id})`, ran: true };
}
