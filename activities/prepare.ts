/**
 * `prepareJob` (control queue): resolves a job spec against temporal.yaml (src/config/spec.ts).
 * Unknown trainers and params that do not fit the trainer's schema fail here, non-retryably,
 * before any GPU is touched.
 */
import * as fs from 'node:fs';
import { prepareSpec } from '../src/config/spec';
import type { JobSpec, PreparedJob } from '../src/shared/spec';
import { checkpointDir, jobFile } from '../src/supervisor/workdir';
import type { CommonDeps } from './deps';

export function createPrepareJob(deps: CommonDeps) {
  return async function prepareJob(spec: JobSpec, jobId: string): Promise<PreparedJob> {
    const prepared = prepareSpec(deps.config, spec, jobId);
    fs.mkdirSync(checkpointDir(prepared.workDir), { recursive: true });
    fs.writeFileSync(jobFile(prepared.workDir), JSON.stringify({ jobId, spec, params: prepared.params, datasetFingerprint: prepared.datasetFingerprint }, null, 2));
    return prepared;
  };
}
