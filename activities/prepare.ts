/**
 * `prepareJob` (control queue): resolves a job spec against temporal.yaml (src/config/spec.ts).
 * Unknown trainers and params that do not fit the trainer's schema fail here, non-retryably,
 * before any GPU is touched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { prepareSpec } from '../src/config/spec';
import type { JobSpec, PreparedJob } from '../src/shared/spec';
import type { CommonDeps } from './deps';

export function createPrepareJob(deps: CommonDeps) {
  return async function prepareJob(spec: JobSpec, jobId: string): Promise<PreparedJob> {
    const prepared = prepareSpec(deps.config, spec, jobId);
    fs.mkdirSync(path.join(prepared.workDir, 'checkpoints'), { recursive: true });
    fs.writeFileSync(path.join(prepared.workDir, 'job.json'), JSON.stringify({ jobId, spec, params: prepared.params, datasetFingerprint: prepared.datasetFingerprint }, null, 2));
    return prepared;
  };
}
