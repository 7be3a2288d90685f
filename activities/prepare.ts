/**
 * `prepareJob` (control queue): resolves a job spec against temporal.yaml (src/config/spec.ts).
 * Unknown models and trainers, params that do not fit the trainer's schema, timeouts below their
 * minimums and datasets outside the allowed roots fail here, non-retryably, before any GPU is
 * touched. The dataset's version is found here only when the caller did not bring it (RetrainModel
 * does; a plain submit does not).
 */
import * as fs from 'node:fs';
import { configDrift, prepareSpec } from '../src/config/spec';
import { pinnedUnder } from '../src/registry/pinned';
import type { JobSpec, PreparedJob } from '../src/shared/spec';
import { checkpointDir, jobFile } from '../src/supervisor/workdir';
import { checkDatasetLocation, datasetVersion } from './dataset';
import type { CommonDeps } from './deps';

export function createPrepareJob(deps: CommonDeps) {
  return async function prepareJob(spec: JobSpec, jobId: string): Promise<PreparedJob> {
    // Drift first: against another config, every other verdict would be about the wrong file.
    const drift = configDrift(deps.config, spec, jobId, deps.workerId);
    if (drift) throw drift;
    // Spec problems first: they need no I/O, and a bad spec must not start a dataset resolver.
    prepareSpec(deps.config, spec, jobId, spec.datasetFingerprint ?? '');
    let fingerprint = spec.datasetFingerprint;
    if (fingerprint) await checkDatasetLocation(deps.config, spec.dataset);
    else fingerprint = (await datasetVersion(deps.config, spec.dataset, spec.model)).fingerprint;
    const prepared: PreparedJob = prepareSpec(deps.config, spec, jobId, fingerprint);
    // The GPU worker keeps these in retention; it learns them here, not from a database of its own.
    const reg = await deps.registry();
    const own = await reg.getByJob(jobId);
    const pinned = [...new Set([...pinnedUnder(await reg.pinnedCheckpoints(), prepared.workDir), ...(own ? [own.checkpointPath, own.artifactPath] : [])])].filter((x): x is string => !!x).sort();
    if (pinned.length) prepared.pinned = pinned;
    fs.mkdirSync(checkpointDir(prepared.workDir), { recursive: true });
    fs.writeFileSync(jobFile(prepared.workDir), JSON.stringify({ jobId, spec, params: prepared.params, datasetFingerprint: prepared.datasetFingerprint }, null, 2));
    return prepared;
  };
}
