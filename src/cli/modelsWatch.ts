/**
 * `kiln models watch <model>`: the consumer side of promotion. Prints the production version and
 * its artifact URI, then one line per production change (promotion, approval, manual promote,
 * rollback), each exactly once and in order: it polls the registry's stage history (every
 * --interval, default 1s) for changes with a higher stage-change id than the last one it reported.
 * `--exec CMD...` runs a reload argv (no shell) once per change with KILN_MODEL, KILN_VERSION,
 * KILN_MODEL_URI, KILN_STAGE and KILN_STAGE_CHANGE_ID in its env. SIGINT/SIGTERM end it with exit 0.
 */
import type { KilnConfig } from '../config/load';
import { UsageError } from '../shared/errors';
import { describeFailure, modelEnv, modelUri, runArgv } from '../registry/onPromote';
import { openRegistry, registryPath } from '../registry/open';
import type { ModelRegistry, ModelVersion, ProductionChange } from '../registry/types';
import { bool, parseArgs, str } from './args';
import type { CliContext } from './verb';

export const MODELS_WATCH_USAGE = `kiln models watch <model> [--stage production] [--interval 1s] [--json] [--exec CMD ARG...]

Prints the model's production version and where its artifact is, then one line each time production
changes (a promotion, an approval, kiln models promote, kiln models rollback): every change exactly once,
in order, also when several happen between two polls. The registry is polled every --interval
(default 1s, at least 100ms). Runs until SIGINT or SIGTERM (exit 0).

  --json      one JSON object a line: {"event":"current"|"change","model","version","previous","uri","changeId","at"}
  --exec      everything after it is a command (argv, no shell) run once per change, after the line is
              printed, with KILN_MODEL, KILN_VERSION, KILN_MODEL_URI, KILN_STAGE=production and
              KILN_STAGE_CHANGE_ID in its env. Not run for the version current at start (load that
              yourself). A failing command is reported on stderr and not retried; the watch goes on.

Example:
  kiln models watch spirals --exec curl -fsS -X POST http://127.0.0.1:8080/reload`;

interface WatchOptions {
  model: string;
  json: boolean;
  intervalMs: number;
  exec: string[];
}

function parseWatch(argv: string[]): WatchOptions {
  const at = argv.indexOf('--exec');
  const exec = at >= 0 ? argv.slice(at + 1) : [];
  if (at >= 0 && exec.length === 0) throw new UsageError('kiln models watch: --exec needs a command after it, e.g. --exec node reload.js');
  const p = parseArgs(at >= 0 ? argv.slice(0, at) : argv, { stage: { type: 'string' }, json: { type: 'bool' }, interval: { type: 'string' } }, 'models watch');
  const [model, extra] = p.positional;
  if (!model) throw new UsageError('kiln models watch: which model? e.g. kiln models watch spirals --exec node reload.js');
  if (extra !== undefined) throw new UsageError(`kiln models watch: one model at a time (got also "${extra}"); to run a command use --exec CMD...`);
  const stage = str(p, 'stage') ?? 'production';
  if (stage !== 'production') throw new UsageError(`kiln models watch: --stage ${stage} is not supported: only production has one version at a time to follow`);
  const raw = str(p, 'interval') ?? '1s';
  const m = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(raw);
  const intervalMs = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!(intervalMs >= 100)) throw new UsageError(`kiln models watch: --interval must be a duration of at least 100ms like 500ms or 2s, got ${JSON.stringify(raw)}`);
  return { model, json: bool(p, 'json'), intervalMs, exec };
}

/** Resolves after ms, or at once when stop() is called. */
function stopper() {
  let stopped = false;
  let wake = () => {};
  const stop = () => {
    stopped = true;
    wake();
  };
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  return { stop, sleep, stopped: () => stopped };
}

function line(o: WatchOptions, event: 'current' | 'change', v: ModelVersion | null, ch: ProductionChange | null, previous: number | null): string {
  const uri = v ? modelUri(v) : null;
  if (o.json) return JSON.stringify({ event, model: o.model, version: v?.version ?? null, previous, uri, changeId: ch?.id ?? null, at: ch?.at ?? null });
  if (!v) return `${o.model}: no production version yet; waiting for a promotion`;
  const where = uri || '(no model artifact recorded)';
  if (event === 'current') return `${o.model}: production is v${v.version} ${where}`;
  const reason = v.decisions.at(-1)?.reason;
  return `${o.model}: production ${previous === null ? '(none)' : `v${previous}`} → v${v.version} ${where}${reason ? ` (${reason})` : ''}`;
}

/** The registry, once it exists (an embedded one is created by the first registered version). */
async function waitForRegistry(ctx: CliContext, config: KilnConfig, s: ReturnType<typeof stopper>, o: WatchOptions): Promise<{ reg: ModelRegistry; waited: boolean } | null> {
  let told = false;
  while (!s.stopped()) {
    const reg = await openRegistry(config, { ifExists: true });
    if (reg) return { reg, waited: told };
    if (!told) {
      // Nothing is production yet: every change found once the registry exists is reported as one.
      ctx.out(line(o, 'current', null, null, null));
      process.stderr.write(`kiln models watch: no registry at ${registryPath(config)} yet; waiting for the first registered version\n`);
    }
    told = true;
    await s.sleep(o.intervalMs);
  }
  return null;
}

async function reload(ctx: CliContext, o: WatchOptions, v: ModelVersion, ch: ProductionChange, s: ReturnType<typeof stopper>): Promise<void> {
  if (!o.exec.length || s.stopped()) return;
  const r = await runArgv(o.exec, { ...modelEnv(v), KILN_STAGE: 'production', KILN_STAGE_CHANGE_ID: String(ch.id) }, { cwd: process.cwd(), timeoutMs: 0, inherit: true });
  if (r.code !== 0) process.stderr.write(`kiln models watch: --exec ${JSON.stringify(o.exec)} for ${o.model} v${v.version} failed: ${describeFailure(r, 0)}; not retried, watching on\n`);
}

async function follow(ctx: CliContext, o: WatchOptions, reg: ModelRegistry, s: ReturnType<typeof stopper>, waited: boolean): Promise<void> {
  const current = waited ? null : await reg.production(o.model);
  const all = waited ? [] : await reg.productionChanges(o.model, 0);
  let last = all.at(-1)?.id ?? 0;
  let previous = current?.version ?? null;
  if (!waited) ctx.out(line(o, 'current', current, current ? (all.filter((c) => c.version === current.version).at(-1) ?? null) : null, null));
  while (!s.stopped()) {
    await s.sleep(o.intervalMs);
    if (s.stopped()) break;
    for (const ch of await reg.productionChanges(o.model, last)) {
      const v = await reg.get(o.model, ch.version);
      last = ch.id;
      if (!v) continue;
      ctx.out(line(o, 'change', v, ch, previous));
      previous = v.version;
      await reload(ctx, o, v, ch, s);
    }
  }
}

export async function modelsWatch(ctx: CliContext, argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    ctx.out(MODELS_WATCH_USAGE);
    return 0;
  }
  const o = parseWatch(argv);
  const config = ctx.config();
  const s = stopper();
  process.on('SIGINT', s.stop);
  process.on('SIGTERM', s.stop);
  const found = await waitForRegistry(ctx, config, s, o);
  try {
    if (found) await follow(ctx, o, found.reg, s, found.waited);
    return 0;
  } finally {
    process.off('SIGINT', s.stop);
    process.off('SIGTERM', s.stop);
    await found?.reg.close();
  }
}
