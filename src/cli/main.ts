/**
 * The `kiln` command. One module per group of verbs; this file only dispatches.
 */
import * as path from 'node:path';
import { loadConfig, type KilnConfig } from '../config/load';
import { ConfigError, UsageError } from '../shared/errors';
import { createLogger } from '../logger';
import { TemporalBinaryNotFound } from '../temporal/binary';
import { approvalVerbs, signalVerbs } from './control';
import { doctorVerb } from './doctor';
import { listVerb } from './list';
import { logsVerb } from './logs';
import { modelsVerb } from './models';
import { retryVerb } from './retry';
import { scheduleVerbs } from './schedules';
import { stackVerbs } from './stack';
import { statusVerb } from './status';
import { submitVerb } from './submit';
import type { Verb } from './verb';
import { watchVerb } from './watch';

const HELP_TOP = `kiln — durable ML training on Temporal

Usage: kiln <verb> [options]      (kiln <verb> --help for details and examples)

Global options: --config <temporal.yaml> (or KILN_CONFIG), --pretty (human logs)
`;

/** The verb table; `extra` (bin/kiln's `worker`) goes after the stack verbs. */
export function verbTable(extra: Record<string, Verb> = {}): Record<string, Verb> {
  return {
    ...stackVerbs,
    ...extra,
    submit: submitVerb,
    status: statusVerb,
    watch: watchVerb,
    list: listVerb,
    ...signalVerbs,
    retry: retryVerb,
    logs: logsVerb,
    models: modelsVerb,
    ...approvalVerbs,
    ...scheduleVerbs,
    doctor: doctorVerb,
  };
}

export async function main(argv = process.argv.slice(2), extra: Record<string, Verb> = {}): Promise<number> {
  const VERBS = verbTable(extra);
  const pretty = argv.includes('--pretty');
  argv = argv.filter((a) => a !== '--pretty');
  let configFile: string | undefined;
  const ci = argv.findIndex((a) => a === '--config' || a.startsWith('--config='));
  if (ci >= 0) {
    const a = argv[ci]!;
    configFile = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[ci + 1];
    argv.splice(ci, a.includes('=') ? 1 : 2);
    if (!configFile) throw new UsageError('kiln: --config needs a file path');
  }
  const [verbName, ...rest] = argv;
  const out = (t: string) => process.stdout.write(`${t}\n`);
  if (!verbName || verbName === '--help' || verbName === '-h' || verbName === 'help') {
    out(HELP_TOP);
    for (const [n, v] of Object.entries(VERBS)) out(`  ${n.padEnd(14)} ${v.summary}`);
    return verbName ? 0 : 2;
  }
  const verb = VERBS[verbName];
  if (!verb) throw new UsageError(`kiln: unknown verb "${verbName}" (run \`kiln --help\` for the list)`);
  if (rest.includes('--help') || rest.includes('-h')) {
    out(verb.usage);
    return 0;
  }
  let cached: KilnConfig | undefined;
  const config = () => (cached ??= loadConfig(configFile ? path.resolve(configFile) : undefined));
  const log = createLogger({ name: `kiln ${verbName}`, pretty: pretty || undefined, level: process.env.KILN_LOG_LEVEL });
  const code = await verb.run({ argv: rest, config, log, out });
  return typeof code === 'number' ? code : 0;
}

export function runCli(extra: Record<string, Verb> = {}): void {
  // `kiln list | head` closes stdout early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  main(process.argv.slice(2), extra).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      if (err instanceof ConfigError || err instanceof UsageError || err instanceof TemporalBinaryNotFound) {
        process.stderr.write(`${err.message}\n`);
        process.exitCode = err instanceof UsageError ? 2 : 1;
        return;
      }
      const e = err as Error;
      process.stderr.write(`kiln: ${e?.message ?? String(err)}\n`);
      if (process.env.KILN_DEBUG) process.stderr.write(`${e?.stack}\n`);
      process.exitCode = 1;
    },
  );
}

if (require.main === module) runCli();
