/**
 * Loads temporal.yaml: YAML → ${ENV} interpolation → zod → cross-checks → compiled config.
 * Every problem is reported by path in one ConfigError; nothing starts on a bad config.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { ConfigError } from '../shared/errors';
import { compileParamsSchema, formatIssues } from '../shared/params';
import { unknownName } from '../shared/names';
import { timeoutProblems } from '../shared/spec';
import { ConfigSchema, type ParsedConfig } from './schema';

export interface KilnConfig extends ParsedConfig {
  /** Absolute path of the file this came from. */
  readonly file: string;
  /** Folder relative paths in the file resolve against. */
  readonly baseDir: string;
  /** Absolute state folder (KILN_HOME wins over state.home). */
  readonly home: string;
  /** Absolute artifacts root. */
  readonly artifactsRoot: string;
  /**
   * Fingerprint of the file as written (its YAML data before ${ENV} interpolation; comments and
   * formatting do not count): what workers publish and jobs carry, so drift between them is seen.
   */
  readonly hash: string;
  /**
   * Per model, the fingerprint of what defines its jobs (its `models.<m>` entry, its trainer's
   * `trainers.<t>` entry, and the top-level retention and timeouts, as written before ${ENV}
   * interpolation). Jobs carry it and workers compare it (WorkerConfigMismatch); host-specific
   * sections (server, workers, storage, state, logging, registry) may differ between hosts.
   */
  readonly jobHashes: Readonly<Record<string, string>>;
}

/** Where the config comes from: --config, then KILN_CONFIG, then ./temporal.yaml. */
export function configPath(explicit?: string): string {
  return path.resolve(explicit ?? process.env.KILN_CONFIG ?? 'temporal.yaml');
}

const ENV_RE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Replaces ${VAR} and ${VAR:-default} in every string value; a missing VAR without default is a problem. */
function interpolate(value: unknown, at: string, env: NodeJS.ProcessEnv, problems: string[]): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_RE, (_m, name: string, def: string | undefined) => {
      const v = env[name];
      if (v !== undefined && v !== '') return v;
      if (def !== undefined) return def;
      problems.push(`${at}: environment variable ${name} is not set (set it, or write \${${name}:-default})`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => interpolate(v, `${at}.${i}`, env, problems));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = interpolate(v, at ? `${at}.${k}` : k, env, problems);
    return out;
  }
  return value;
}

/** Checks that need more than one field: models refer to trainers and pools, params fit their trainer. */
function crossCheck(cfg: ParsedConfig): string[] {
  const problems: string[] = [];
  const compiled = (t: ParsedConfig['timeouts']) => ({ heartbeatMs: t.heartbeat, stallMs: t.stall, startToCloseMs: t.startToClose, cancelGraceMs: t.cancelGrace, maxAttempts: t.maxAttempts, maxInterruptions: t.maxInterruptions ?? null });
  problems.push(...timeoutProblems(compiled(cfg.timeouts)));
  for (const [modelName, m] of Object.entries(cfg.models)) {
    const at = `models.${modelName}`;
    if (m.timeouts) problems.push(...timeoutProblems(compiled({ ...cfg.timeouts, ...m.timeouts }), `${at}.timeouts`));
    const trainer = cfg.trainers[m.trainer];
    if (!trainer) {
      problems.push(`${at}.trainer: ${unknownName('trainer', m.trainer, Object.keys(cfg.trainers))}`);
    } else {
      const r = compileParamsSchema(trainer.params).safeParse(m.params);
      if (!r.success) problems.push(...formatIssues(`${at}.params`, r.error));
    }
    if (!cfg.workers.pools[m.pool]) {
      problems.push(`${at}.pool: ${unknownName('pool', m.pool, Object.keys(cfg.workers.pools))}`);
    }
    if (m.promotion && m.requiredMetrics.length && !m.requiredMetrics.includes(m.promotion.metric)) {
      problems.push(`${at}.promotion.metric: "${m.promotion.metric}" should also be listed in requiredMetrics, or a version missing it could be promoted`);
    }
  }
  return problems;
}

export function parseConfigText(text: string, file: string, env: NodeJS.ProcessEnv = process.env): KilnConfig {
  const source = path.basename(file);
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}${e.linePos ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : ''}`),
    );
  }
  const raw = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(source, ['(root): expected a mapping of sections (server, trainers, models, ...)']);
  const hash = configHash(raw);
  const problems: string[] = [];
  const interpolated = interpolate(raw, '', env, problems);
  const parsed = ConfigSchema.safeParse(interpolated);
  if (!parsed.success) problems.push(...formatIssues('', parsed.error));
  if (problems.length || !parsed.success) throw new ConfigError(source, problems);
  const cross = crossCheck(parsed.data);
  if (cross.length) throw new ConfigError(source, cross);

  const baseDir = path.dirname(path.resolve(file));
  const home = path.resolve(baseDir, env.KILN_HOME || parsed.data.state.home);
  const artifactsRoot = parsed.data.artifacts.root ? path.resolve(baseDir, parsed.data.artifacts.root) : path.join(home, 'artifacts');
  const server = { ...parsed.data.server, address: env.TEMPORAL_ADDRESS || parsed.data.server.address };
  if (env.TEMPORAL_NAMESPACE) server.namespace = env.TEMPORAL_NAMESPACE;
  return { ...parsed.data, server, file: path.resolve(file), baseDir, home, artifactsRoot, hash, jobHashes: jobHashes(raw as RawSections) };
}

export function loadConfig(file = configPath(), env: NodeJS.ProcessEnv = process.env): KilnConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(path.basename(file), [
      code === 'ENOENT' ? `file not found at ${file} (run from the repo root, or pass --config / set KILN_CONFIG)` : `cannot read ${file}: ${String(err)}`,
    ]);
  }
  return parseConfigText(text, file, env);
}

/** JSON with sorted keys, so the hash does not depend on the order of keys in the file. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v ?? null);
}

/** 12 hex digits of the sha256 of the config's data as written; see KilnConfig.hash. */
export function configHash(raw: unknown): string {
  return createHash('sha256').update(canonical(raw)).digest('hex').slice(0, 12);
}

type RawSections = { models?: Record<string, { trainer?: unknown } | null>; trainers?: Record<string, unknown>; retention?: unknown; timeouts?: unknown };

/** See KilnConfig.jobHashes. */
function jobHashes(raw: RawSections): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [m, model] of Object.entries(raw.models ?? {})) {
    const t = typeof model?.trainer === 'string' ? model.trainer : '';
    out[m] = configHash({ model, trainer: raw.trainers?.[t] ?? null, retention: raw.retention ?? null, timeouts: raw.timeouts ?? null });
  }
  return out;
}

/** The hash of the config file as it is on disk now (null when it cannot be read or parsed). */
export function configFileHash(file: string): string | null {
  try {
    const doc = parseDocument(fs.readFileSync(file, 'utf8'), { uniqueKeys: true });
    return doc.errors.length ? null : configHash(doc.toJS() ?? {});
  } catch {
    return null;
  }
}

/** The folder Kiln is installed in (where package.json and the shipped examples/ are). */
export const KILN_ROOT = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();

/**
 * Resolves a trainer command's argv (also `check:` and dataset version commands). `node` is the
 * running Node. A relative path (`./x`, `../x`, or `a/b` that exists) resolves against the config
 * file's folder; when it is not there, against Kiln's install folder, so the shipped examples
 * (`./examples/...`) work from a config anywhere. A name without a slash is looked up on PATH.
 */
export function resolveCommand(cfg: Pick<KilnConfig, 'baseDir'>, argv: readonly string[]): string[] {
  return argv.map((a, i) => {
    if (i === 0 && a === 'node') return process.execPath;
    if (path.isAbsolute(a)) return a;
    const explicit = a.startsWith('./') || a.startsWith('../');
    if (!explicit && !/[/\\]/.test(a)) return a;
    for (const base of [cfg.baseDir, KILN_ROOT]) {
      if (fs.existsSync(path.join(base, a))) return path.resolve(base, a);
    }
    return explicit ? path.resolve(cfg.baseDir, a) : a;
  });
}
