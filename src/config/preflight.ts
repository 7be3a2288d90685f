/**
 * Preflight of trainer commands: can every trainer and evaluate command of temporal.yaml start on
 * this host? `kiln config check` and `kiln doctor` report each broken one by model; a GPU worker
 * refuses to start when a model of its pool has one. Paths resolve as resolveCommand says.
 */
import { commandProblem } from '../supervisor/commandCheck';
import { resolveCommand, type KilnConfig } from './load';

export interface CommandProblem {
  trainer: string;
  /** `command` or `evaluate.command`. */
  which: 'command' | 'evaluate.command';
  argv: readonly string[];
  problem: string;
  /** Models that use this trainer. */
  models: string[];
}

/** Every trainer (and evaluate) command that cannot start here; only trainers of `pool`'s models when given. */
export function commandProblems(config: KilnConfig, o: { pool?: string } = {}): CommandProblem[] {
  const out: CommandProblem[] = [];
  for (const [name, t] of Object.entries(config.trainers)) {
    const models = Object.entries(config.models)
      .filter(([, m]) => m.trainer === name)
      .map(([m]) => m);
    if (o.pool !== undefined && !Object.values(config.models).some((m) => m.trainer === name && m.pool === o.pool)) continue;
    const cmds: Array<[CommandProblem['which'], readonly string[] | undefined]> = [
      ['command', t.command],
      ['evaluate.command', o.pool !== undefined && t.evaluate.queue === 'control' ? undefined : t.evaluate.command],
    ];
    for (const [which, argv] of cmds) {
      if (!argv) continue;
      const problem = commandProblem(resolveCommand(config, argv), config.baseDir, process.env.PATH ?? '', argv);
      if (problem) out.push({ trainer: name, which, argv, problem, models });
    }
  }
  return out;
}

/** One line per problem: which models break, which command, why. */
export function describeCommandProblem(p: CommandProblem): string {
  const who = p.models.length ? `model(s) ${p.models.join(', ')}` : `trainer ${p.trainer} (no model uses it)`;
  return `${who}: trainers.${p.trainer}.${p.which} \`${p.argv.join(' ')}\` cannot start: ${p.problem} (relative paths: the config's folder, then Kiln's install folder)`;
}
