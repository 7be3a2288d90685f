/**
 * Registry verbs: `kiln models list|show|promote|rollback`. The registry is the SQLite file in the
 * state folder (<KILN_HOME>/registry.sqlite), or the PostgreSQL database of registry.url. Approvals
 * (`kiln approve|reject`) are in control.ts.
 */
import type { KilnConfig } from '../config/load';
import { UsageError } from '../shared/errors';
import { formatMetric } from '../registry/promotion';
import type { ModelRegistry, ModelVersion, Stage } from '../registry/types';
import { openRegistry, registryPath, registryWhere } from '../registry/open';
import { runOnPromote } from '../registry/onPromote';
import { MODELS_WATCH_USAGE, modelsWatch } from './modelsWatch';
import { bool, parseArgs, str, type Parsed } from './args';
import { defaultBy, guarded, Refused } from './refused';
import { withClient, type CliContext, type Verb } from './verb';

const STAGES: readonly Stage[] = ['candidate', 'production', 'archived'];

/** Opens the registry; an embedded one only when its file exists: reading must not create an empty database. */
async function withRegistry<T>(config: KilnConfig, fn: (reg: ModelRegistry | null) => T | Promise<T>): Promise<T> {
  const reg = await openRegistry(config, { ifExists: true });
  try {
    return await fn(reg);
  } finally {
    await reg?.close();
  }
}

function parseVersion(raw: string | undefined, verb: string, example: string): number {
  if (raw === undefined) throw new UsageError(`kiln ${verb}: which version? e.g. ${example}`);
  const m = /^v?(\d+)$/i.exec(raw);
  if (!m || Number(m[1]) < 1) throw new UsageError(`kiln ${verb}: version must be a positive integer like 3 or v3, got ${JSON.stringify(raw)}`);
  return Number(m[1]);
}

async function registeredModels(reg: ModelRegistry | null): Promise<string[]> {
  return reg ? [...new Set((await reg.list()).map((v) => v.model))] : [];
}

/** The model's versions, or a refusal that lists what the registry does hold. */
async function requireModel(config: KilnConfig, reg: ModelRegistry | null, model: string): Promise<ModelVersion[]> {
  const versions = reg ? await reg.list({ model }) : [];
  if (versions.length) return versions;
  const known = await registeredModels(reg);
  const where = reg ? `the registry at ${reg.where}` : `the registry (no ${registryPath(config)} yet: no job has registered a version)`;
  const configured = config.models[model] ? ` ("${model}" is configured but has no registered version yet; train it with kiln submit ${model})` : '';
  throw new Refused('UNKNOWN_MODEL', `unknown model "${model}" in ${where}${configured}; registered models: ${known.join(', ') || 'none'}`);
}

function requireVersion(versions: ModelVersion[], model: string, version: number): ModelVersion {
  const v = versions.find((x) => x.version === version);
  if (v) return v;
  throw new Refused('UNKNOWN_VERSION', `model ${model} has no version ${version}; its versions: ${versions.map((x) => `v${x.version}`).join(', ')} (see kiln models show ${model})`);
}

function metricsText(m: Record<string, number>, first: readonly string[] = []): string {
  const keys = [...new Set([...first.filter((k) => k in m), ...Object.keys(m).sort()])];
  return keys.map((k) => `${k}=${formatMetric(m[k]!)}`).join(' ') || '-';
}

function completeText(v: ModelVersion): string {
  return v.complete ? 'yes' : `NO (missing ${v.missingMetrics.join(', ')})`;
}

function preferredMetrics(config: KilnConfig, model: string): string[] {
  const m = config.models[model];
  return m ? [...(m.promotion ? [m.promotion.metric] : []), ...m.requiredMetrics] : [];
}

function renderTable(config: KilnConfig, versions: ModelVersion[]): string[] {
  const rows = versions.map((v) => [
    v.model,
    `v${v.version}`,
    v.stage,
    completeText(v),
    metricsText(v.metrics, preferredMetrics(config, v.model)).split(' ').slice(0, 3).join(' '),
    v.createdAt.replace(/\.\d+Z$/, 'Z'),
    v.jobId,
  ]);
  const head = ['MODEL', 'VERSION', 'STAGE', 'COMPLETE', 'METRICS', 'CREATED', 'JOB'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [fmt(head), ...rows.map(fmt)];
}

/** A stored model (storage.kind: s3) by its URI, else its path on the shared disk (pinned against retention). */
function artifactText(a: string | null): string {
  if (!a) return '-';
  return /^[a-z][a-z0-9+.-]*:\/\//.test(a) ? `${a} (in object storage)` : `${a} (pinned)`;
}

/** `  stored:      notes.txt  s3://…/artifacts/notes.txt` then each file's size and sha256. */
function storedText(v: ModelVersion): string[] {
  const out: string[] = [];
  for (const [i, a] of (v.artifacts ?? []).entries()) {
    out.push(`  ${i === 0 ? 'stored:  ' : '         '}   ${a.name}  ${a.uri}  (${a.files.length} file${a.files.length === 1 ? '' : 's'}, ${a.bytes} bytes)`);
    for (const f of a.files) out.push(`                 ${f.path}  ${f.size} bytes  sha256 ${f.sha256}`);
  }
  return out;
}

function renderVersion(config: KilnConfig, v: ModelVersion): string[] {
  const lines = [
    `${v.model} v${v.version}  ${v.stage}${v.complete ? '' : `  INCOMPLETE: missing required metrics ${v.missingMetrics.join(', ')}; can never be promoted`}`,
    `  created:     ${v.createdAt}`,
    `  job:         ${v.jobId} (run ${v.runId})`,
    `  trainer:     ${v.trainer}`,
    `  params:      ${JSON.stringify(v.params)}`,
    `  dataset:     ${v.datasetFingerprint}`,
    `  base:        ${v.baseCheckpoint ?? '-'}`,
    `  artifact:    ${artifactText(v.artifactPath)}`,
    ...storedText(v),
    `  checkpoint:  ${v.checkpointPath ? `${v.checkpointPath} (pinned)` : '-'}`,
    `  metrics:     ${metricsText(v.metrics, preferredMetrics(config, v.model))}`,
    `  complete:    ${completeText(v)}`,
    `  decisions:${v.decisions.length ? '' : '   -'}`,
  ];
  for (const d of v.decisions) lines.push(`    ${d.at}  ${d.kind.padEnd(15)} ${d.by ? `by ${d.by}: ` : ''}${d.reason}`);
  return lines;
}

async function list(ctx: CliContext, argv: string[]): Promise<number> {
  const p = parseArgs(argv, { model: { type: 'string' }, stage: { type: 'string' }, json: { type: 'bool' } }, 'models list');
  const stage = str(p, 'stage');
  if (stage !== undefined && !STAGES.includes(stage as Stage)) throw new UsageError(`kiln models list: --stage must be one of ${STAGES.join(', ')}, got "${stage}"`);
  const model = str(p, 'model');
  const config = ctx.config();
  return guarded(ctx, 'models list', bool(p, 'json'), () =>
    withRegistry(config, async (reg) => {
      if (model !== undefined && !config.models[model]) await requireModel(config, reg, model);
      const versions = reg ? await reg.list({ model, stage: stage as Stage | undefined }) : [];
      if (bool(p, 'json')) ctx.out(JSON.stringify(versions));
      else if (versions.length === 0) ctx.out(`(no versions${model ? ` of ${model}` : ''}${stage ? ` in stage ${stage}` : ''}; registry: ${registryWhere(config)})`);
      else for (const l of renderTable(config, versions)) ctx.out(l);
      return 0;
    }),
    false,
  );
}

async function show(ctx: CliContext, argv: string[]): Promise<number> {
  const p = parseArgs(argv, { json: { type: 'bool' } }, 'models show');
  const [model, rawVersion] = p.positional;
  if (!model) throw new UsageError('kiln models show: which model? e.g. kiln models show spirals 3');
  const version = rawVersion === undefined ? undefined : parseVersion(rawVersion, 'models show', `kiln models show ${model} 3`);
  const config = ctx.config();
  return guarded(ctx, 'models show', bool(p, 'json'), () =>
    withRegistry(config, async (reg) => {
      const versions = await requireModel(config, reg, model);
      if (version !== undefined) {
        const v = requireVersion(versions, model, version);
        ctx.out(bool(p, 'json') ? JSON.stringify(v) : renderVersion(config, v).join('\n'));
        return 0;
      }
      const production = versions.find((v) => v.stage === 'production') ?? null;
      if (bool(p, 'json')) {
        ctx.out(JSON.stringify({ model, production: production?.version ?? null, versions }));
        return 0;
      }
      ctx.out(`${model}: ${production ? `production v${production.version}` : 'no production version'}, ${versions.length} version(s)`);
      for (const l of renderTable(config, versions)) ctx.out(`  ${l}`);
      ctx.out('');
      ctx.out(renderVersion(config, production ?? versions[versions.length - 1]!).join('\n'));
      return 0;
    }),
    false,
  );
}

function requireReason(p: Parsed, verb: string, example: string): string {
  const reason = str(p, 'reason')?.trim();
  if (!reason) throw new UsageError(`kiln ${verb}: --reason is required (it is recorded on the version), e.g. ${example}`);
  return reason;
}

async function promote(ctx: CliContext, argv: string[]): Promise<number> {
  const p = parseArgs(argv, { reason: { type: 'string' }, by: { type: 'string' }, json: { type: 'bool' } }, 'models promote');
  const [model, rawVersion] = p.positional;
  const example = 'kiln models promote spirals 3 --reason "better on the March holdout"';
  if (!model) throw new UsageError(`kiln models promote: which model and version? e.g. ${example}`);
  const version = parseVersion(rawVersion, 'models promote', example);
  const reason = requireReason(p, 'models promote', example);
  const by = str(p, 'by') ?? defaultBy();
  const config = ctx.config();
  const json = bool(p, 'json');
  return guarded(ctx, 'models promote', json, () =>
    withRegistry(config, async (reg) => {
      const versions = await requireModel(config, reg, model);
      const target = requireVersion(versions, model, version);
      const before = versions.find((v) => v.stage === 'production') ?? null;
      const changed = before?.version !== target.version;
      // The registry refuses an incomplete version inside its transaction, so nothing changes.
      const after = await reg!.promote(model, version, { reason, by, kind: 'manual-promote' });
      const hook = await hookFor(ctx, config, reg!, model, version, 'models promote');
      if (hook.failed) return 1;
      const result = { ok: true, model, version, stage: after.stage, changed, previous: before?.version ?? null, reason, by, ...(hook.line ? { onPromote: hook.line } : {}) };
      if (json) ctx.out(JSON.stringify(result));
      else if (!changed) ctx.out(`${model} v${version} is already production; nothing changed`);
      else ctx.out(`promoted ${model} v${version} to production${before ? ` (v${before.version} archived)` : ''}: ${reason}`);
      if (!json && hook.line) ctx.out(hook.line);
      return 0;
    }),
  );
}

async function rollback(ctx: CliContext, argv: string[]): Promise<number> {
  const p = parseArgs(argv, { to: { type: 'string' }, reason: { type: 'string' }, by: { type: 'string' }, json: { type: 'bool' } }, 'models rollback');
  const [model] = p.positional;
  const example = 'kiln models rollback spirals --to 2 --reason "v3 regressed on live traffic"';
  if (!model) throw new UsageError(`kiln models rollback: which model? e.g. ${example}`);
  const to = str(p, 'to') === undefined ? undefined : parseVersion(str(p, 'to'), 'models rollback', example);
  const reason = requireReason(p, 'models rollback', example);
  const by = str(p, 'by') ?? defaultBy();
  const config = ctx.config();
  const json = bool(p, 'json');
  return guarded(ctx, 'models rollback', json, () =>
    withRegistry(config, async (reg) => {
      const versions = await requireModel(config, reg, model);
      if (to !== undefined) requireVersion(versions, model, to);
      const before = versions.find((v) => v.stage === 'production') ?? null;
      const after = await reg!.rollback(model, { to, reason, by });
      const changed = before?.version !== after.version;
      const hook = await hookFor(ctx, config, reg!, model, after.version, 'models rollback');
      if (hook.failed) return 1;
      const result = { ok: true, model, from: before?.version ?? null, to: after.version, stage: after.stage, changed, reason, by, ...(hook.line ? { onPromote: hook.line } : {}) };
      if (json) ctx.out(JSON.stringify(result));
      else if (!changed) ctx.out(`${model} v${after.version} is already production; nothing changed`);
      else ctx.out(`rolled back ${model}: production ${before ? `v${before.version}` : '(none)'} → v${after.version}: ${reason}`);
      if (!json && hook.line) ctx.out(hook.line);
      return 0;
    }),
  );
}

/**
 * The model's promotion.onPromote hook for the production change just made (or found: a repeated
 * promote of the production version runs a hook that failed before, and never one that ran).
 */
async function hookFor(ctx: CliContext, config: KilnConfig, reg: ModelRegistry, model: string, version: number, verb: string): Promise<{ line: string | null; failed: boolean }> {
  try {
    const out = await runOnPromote(config, reg, model, version, `cli:${defaultBy()}`, (fn) => withClient(config, fn));
    return { line: out.line, failed: false };
  } catch (err) {
    process.stderr.write(`kiln ${verb}: ${(err as Error).message}; retry it with: kiln models promote ${model} ${version} --reason "rerun onPromote"\n`);
    return { line: null, failed: true };
  }
}

const MODELS_USAGE = `kiln models list [--model M] [--stage candidate|production|archived] [--json]
kiln models show <model> [version] [--json]
kiln models promote <model> <version> --reason TEXT [--by NAME] [--json]
kiln models rollback <model> [--to VERSION] --reason TEXT [--by NAME] [--json]
kiln models watch <model> [--stage production] [--interval 1s] [--json] [--exec CMD ARG...]

The model registry: <state folder>/registry.sqlite (KILN_HOME overrides state.home in temporal.yaml),
or the PostgreSQL database of registry.url in temporal.yaml, shared by every host.

  list      versions with stage, completeness and headline metrics
  show      one model (its versions, and the production or newest version in full), or one version:
            lineage (job, run, trainer, params, dataset fingerprint, base checkpoint), metrics, stage,
            complete/missing metrics, and every decision with its reason
  promote   make a version production by hand (decision kind manual-promote); the previous production
            version is archived. An incomplete version is refused.
  rollback  re-point production to an earlier version: --to VERSION, or without it the version that
            was production before the current one. Recorded on both versions with the reason.
  watch     follow the production version and run a reload once per change (below)

promote and rollback run the model's promotion.onPromote command or signal (temporal.yaml) once for the change;
if it fails, the change stands and the command exits 1: repeat the promote to rerun the hook.

Unknown models or versions and incomplete versions are refused with exit 1 and nothing changes;
with --json the refusal is {"ok":false,"error":{"code":...,"message":...}} on stdout.
--by defaults to $KILN_USER or your login name.

Examples:
  kiln models list
  kiln models list --model spirals --json
  kiln models show spirals
  kiln models show spirals 3 --json
  kiln models promote spirals 3 --reason "better on the March holdout"
  kiln models rollback spirals --reason "v4 regressed on live traffic"
  kiln models rollback spirals --to 2 --reason "back to the last known good" --by ana

${MODELS_WATCH_USAGE}`;

async function modelsCommand(ctx: CliContext): Promise<number> {
  const [sub, ...rest] = ctx.argv;
  switch (sub) {
    case 'list':
      return list(ctx, rest);
    case 'show':
      return show(ctx, rest);
    case 'promote':
      return promote(ctx, rest);
    case 'rollback':
      return rollback(ctx, rest);
    case 'watch':
      return modelsWatch(ctx, rest);
    default:
      throw new UsageError(`kiln models: ${sub ? `unknown sub-command "${sub}"` : 'say what to do'}: list, show, promote, rollback or watch (see kiln models --help)`);
  }
}

export const modelsVerb: Verb = { summary: 'the model registry: list, show, promote, rollback, watch', usage: MODELS_USAGE, run: modelsCommand };
