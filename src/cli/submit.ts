/**
 * `kiln submit`: validate a job spec against the trainer's declared params, then start TrainingJob.
 * Exit codes: 0 started, 1 bad spec or refused, 2 usage; with --watch, those of `kiln watch`.
 */
import { submitJob } from '../client/jobs';
import { buildSpec } from '../config/spec';
import { ConfigError, UsageError } from '../shared/errors';
import { bool, int, list, parseArgs, str } from './args';
import { parseParamFlags } from './params';
import { withClient, type CliContext, type Verb } from './verb';
import { watchJob } from './watch';

async function submit(ctx: CliContext): Promise<number> {
  const p = parseArgs(ctx.argv, { param: { type: 'list', alias: 'p' }, pool: { type: 'string' }, gpus: { type: 'string' }, watch: { type: 'bool' }, json: { type: 'bool' }, id: { type: 'string' } }, 'submit');
  const model = p.positional[0];
  if (!model) throw new UsageError('kiln submit: which model? e.g. kiln submit spirals --param lr=0.05 (models are listed in temporal.yaml; kiln config check)');
  if (p.positional.length > 1) throw new UsageError(`kiln submit: one model at a time; params go in --param k=v (got ${p.positional.slice(1).join(' ')})`);
  const config = ctx.config();
  const jobId = str(p, 'id');
  let spec;
  try {
    spec = buildSpec(config, model, { params: parseParamFlags(config, model, list(p, 'param')), pool: str(p, 'pool'), gpus: int(p, 'gpus', 'submit') });
  } catch (err) {
    if (err instanceof ConfigError && !err.source.startsWith('kiln submit')) throw new ConfigError(`kiln submit: the spec for model ${model}`, err.problems);
    throw err;
  }
  return withClient(config, async (client) => {
    let h;
    try {
      h = await submitJob(client, config, spec, { jobId });
    } catch (err) {
      if (err instanceof ConfigError) throw new ConfigError(`kiln submit: the spec for model ${model}`, err.problems);
      if ((err as Error).name === 'WorkflowExecutionAlreadyStartedError') throw new Error(`kiln submit: a job with id ${jobId} already exists; pick another --id or leave it out`);
      throw err;
    }
    if (bool(p, 'json')) ctx.out(JSON.stringify({ jobId: h.workflowId, runId: h.firstExecutionRunId, model: spec.model, trainer: spec.trainer, pool: spec.pool, gpus: spec.gpus, params: spec.params }));
    else ctx.out(h.workflowId);
    if (bool(p, 'watch')) return watchJob(client, h.workflowId, ctx.out, { json: bool(p, 'json') });
    return 0;
  });
}

export const submitVerb: Verb = {
  summary: 'start a training job for a model in temporal.yaml',
  usage: `kiln submit <model> [--param k=v ...] [--pool P] [--gpus N] [--id JOB_ID] [--watch] [--json]

Validates the spec against the trainer's declared params before starting anything (unknown model,
undeclared param or out-of-range value: exit 1, no job started); prints the job id.
With --watch, follows the job and exits like kiln watch (0 completed, 1 failed, 3 cancelled).

Examples:
  kiln submit spirals
  kiln submit spirals --param lr=0.05 --param epochs=20 --watch
  JOB=$(kiln submit spirals --json | jq -r .jobId)`,
  run: submit,
};
