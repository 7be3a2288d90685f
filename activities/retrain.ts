/**
 * `checkRetrainNeed` (control queue): finds the version of the model's dataset (its resolver), reads production and the last
 * training time from the registry, evaluates the need-checks and builds the TrainingJob spec from
 * temporal.yaml, so RetrainModel itself stays free of Node and config.
 */
import { ApplicationFailure } from '@temporalio/common';
import { ConfigError, ErrorType } from '../src/shared/errors';
import { unknownName } from '../src/shared/names';
import { staticSummary, type Trigger } from '../src/shared/spec';
import { buildSpec, validateSpec } from '../src/config/spec';
import { DEFAULT_NEED_POLICY, evaluateNeed, trainingIdFor, type NeedPolicy, type RetrainCheck, type RetrainRequest } from '../src/shared/retrain';
import { datasetVersion } from './dataset';
import type { CommonDeps } from './deps';

export interface CheckRetrainInput extends RetrainRequest {
  /** Nominal fire time of a scheduled run (TemporalScheduledStartTime), epoch ms. */
  scheduledAtMs?: number | null;
  /** When the RetrainModel run started, epoch ms. */
  startedAtMs?: number;
}

/** Slack on top of catchupWindow + jitter before a scheduled run counts as a backfill. */
const BACKFILL_SLACK_MS = 10_000;

export function createRetrainActivities(deps: CommonDeps) {
  return {
    async checkRetrainNeed(input: CheckRetrainInput): Promise<RetrainCheck> {
      const { config } = deps;
      const m = config.models[input.model];
      if (!m) {
        throw ApplicationFailure.nonRetryable(
          `RetrainModel: ${unknownName('model', input.model, Object.keys(config.models), config.file)}; run \`kiln schedules sync\` to remove schedules of deleted models`,
          ErrorType.InvalidJobSpec,
        );
      }
      const r = m.retrain;
      const policy: NeedPolicy = r
        ? { dataChanged: r.when.dataChanged, maxAgeMs: r.when.maxAge ?? null, always: r.when.always, minIntervalMs: r.minInterval }
        : DEFAULT_NEED_POLICY;

      // The server has no backfill marker on started runs; a nominal fire time older than any
      // catch-up could produce is a backfill.
      let trigger: Trigger = input.trigger;
      if (trigger === 'schedule' && input.scheduledAtMs && input.startedAtMs) {
        const lag = input.startedAtMs - input.scheduledAtMs;
        if (lag > (r?.catchupWindow ?? 60_000) + (r?.jitter ?? 0) + BACKFILL_SLACK_MS) trigger = 'backfill';
      }

      // Once per decision: the child TrainingJob gets this fingerprint and does not resolve it again.
      const version = await datasetVersion(config, m.dataset, input.model);
      const fingerprint = version.fingerprint;
      const reg = await deps.registry();
      const prod = await reg.production(input.model);
      const lastTrainedAt = await reg.lastTrainedAt(input.model);
      const decision = evaluateNeed(
        policy,
        {
          fingerprint,
          production: prod ? { version: prod.version, datasetFingerprint: prod.datasetFingerprint, createdAt: prod.createdAt } : null,
          lastTrainedAt,
          nowMs: Date.now(),
        },
        input.force ?? false,
      );
      const childId = trainingIdFor(input.model, fingerprint);
      let spec;
      try {
        spec = buildSpec(config, input.model, { trigger, datasetFingerprint: fingerprint });
        validateSpec(config, spec, childId);
      } catch (err) {
        if (err instanceof ConfigError) throw ApplicationFailure.nonRetryable(err.message, ErrorType.InvalidJobSpec, { problems: err.problems });
        throw err;
      }
      deps.log.info({ model: input.model, trigger, force: input.force ?? false, train: decision.train, reason: decision.reason, childId }, 'retrain need-check');
      const prior = await reg.getByJob(childId);
      return {
        ...decision,
        fingerprint,
        dataset: { resolver: version.resolver, detail: version.detail },
        childId,
        spec,
        staticSummary: staticSummary(spec),
        trigger,
        productionVersion: prod?.version ?? null,
        registered: prior ? { version: prior.version, stage: prior.stage } : null,
      };
    },
  };
}
