/**
 * `evaluate`: runs the trainer's evaluation command on the held-out split, or takes the validation
 * metrics the trainer already emitted. Registered on the control worker and on GPU workers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { ErrorType } from '../src/shared/errors';
import type { PreparedJob } from '../src/shared/spec';
import type { TrainResult } from '../src/shared/summary';
import { pidfileFor } from '../src/supervisor/pidfiles';
import { ExitCode, logTail, trainerEnv } from '../src/supervisor/protocol';
import { startTrainer } from '../src/supervisor/trainer';
import { downloadCheckpoint, logKey, openStore, uploadLog, type ObjectStore } from '../src/storage';
import { evaluateLogFile } from '../src/supervisor/workdir';
import type { CommonDeps } from './deps';

export interface EvaluateInput {
  prepared: PreparedJob;
  train: TrainResult;
}

export interface EvaluateResult {
  metrics: Record<string, number>;
  source: 'command' | 'training';
}

const tail = (file: string): string => logTail(file, 20, 16 * 1024);

export function createEvaluate(deps: CommonDeps) {
  return async function evaluate({ prepared: p, train }: EvaluateInput): Promise<EvaluateResult> {
    const trainer = deps.config.trainers[p.spec.trainer];
    if (!trainer?.evaluate.command) return { metrics: train.validation, source: 'training' };
    if (!train.modelPath) {
      throw ApplicationFailure.nonRetryable('the trainer announced no "model" artifact, so there is nothing to evaluate', ErrorType.TrainerFailed);
    }
    const ctx = Context.current();
    const store = deps.config.storage.kind === 's3' ? openStore(deps.config.storage, deps.config) : null;
    try {
      const modelPath = await modelOnThisHost(store, p, train, deps);
      return await runEvaluation(deps, ctx, { p, train, modelPath, trainer, store });
    } finally {
      store?.close();
    }
  };
}

/**
 * The model's local path: as trained when this host has it; else (another host trained it, with
 * `storage.kind: s3`) downloaded from storage to the same path in this host's state folder, every
 * file checked against its recorded size and sha256 (files already there and matching are reused).
 */
async function modelOnThisHost(store: ObjectStore | null, p: PreparedJob, train: TrainResult, deps: CommonDeps): Promise<string> {
  const local = train.modelPath!;
  if (fs.existsSync(local)) return local;
  if (!train.modelUri) {
    throw ApplicationFailure.retryable(`cannot load model ${local}: it is not on this host (${deps.workerId}) and not in object storage; with GPU hosts that share no disk, set storage.kind: s3 (docs/deploy.md)`, ErrorType.TrainerFailed);
  }
  if (!store || !train.modelUri.startsWith(`${store.uri}/`)) {
    throw ApplicationFailure.nonRetryable(`the model is stored at ${train.modelUri}, but this worker's storage: in ${deps.config.file} is ${store?.uri ?? 'kind: local'}; every host must share one storage: section`, ErrorType.WorkerConfig);
  }
  const prefix = train.modelUri.slice(store.uri.length + 1);
  const rel = path.relative(p.workDir, local);
  if (!rel || rel.startsWith('..') || path.isAbsolute(rel)) throw ApplicationFailure.nonRetryable(`model path ${local} is outside the job folder ${p.workDir}`, ErrorType.TrainerFailed);
  try {
    const got = await downloadCheckpoint(store, prefix, path.dirname(local));
    deps.log.info({ jobId: p.jobId, uri: train.modelUri, path: got.path, bytes: got.manifest.bytes, downloadedBytes: got.downloadedBytes, ms: got.ms }, 'evaluate: model not on this host; downloaded it from storage (checksums verified)');
    return got.path;
  } catch (err) {
    throw ApplicationFailure.retryable(`cannot download the model ${train.modelUri} to ${local}: ${err instanceof Error ? err.message : String(err)}`, ErrorType.StorageUnavailable);
  }
}

async function runEvaluation(
  deps: CommonDeps,
  ctx: Context,
  { p, train, modelPath, trainer, store }: { p: PreparedJob; train: TrainResult; modelPath: string; trainer: NonNullable<CommonDeps['config']['trainers'][string]>; store: ObjectStore | null },
): Promise<EvaluateResult> {
  const metrics: Record<string, number> = {};
  const logFile = evaluateLogFile(p.workDir);
  // On a host that did not train the job, its folder may not exist yet.
  fs.mkdirSync(p.workDir, { recursive: true });
  const handle = startTrainer({
    argv: deps.trainerArgv(trainer.evaluate.command!),
    env: trainerEnv({
      mode: 'evaluate',
      jobId: p.jobId,
      attempt: ctx.info.attempt,
      params: p.params,
      workDir: p.workDir,
      resumeFrom: '',
      modelPath,
      gpuIds: train.gpuIds,
      trainerEnv: trainer.env,
    }),
    cwd: p.workDir,
    logFile,
    pidfile: pidfileFor(deps.config.home, `${p.jobId}.evaluate`),
    graceMs: p.timeouts.cancelGraceMs,
    heartbeatMs: p.timeouts.heartbeatMs,
    logCap: deps.config.workers.trainerLog,
    record: { jobId: p.jobId, attempt: ctx.info.attempt, taskToken: ctx.info.base64TaskToken ?? null },
    onEvent: (e) => {
      if (e.type === 'metrics') Object.assign(metrics, e.values);
      ctx.heartbeat();
    },
    onMalformed: (line, why) => deps.log.warn({ jobId: p.jobId, line: line.slice(0, 200), why }, 'evaluate: malformed trainer event ignored'),
    onError: (err) => deps.log.warn({ jobId: p.jobId, err: String(err) }, 'evaluate: cannot handle a trainer event'),
  });
  let cancelled = false;
  ctx.cancelled.catch(() => {
    cancelled = true;
    void handle.stop(p.timeouts.cancelGraceMs);
  });
  const ticker = setInterval(() => ctx.heartbeat(), 500);
  const code = await handle.exited.finally(() => clearInterval(ticker));
  if (store) {
    await uploadLog(store, logKey(p.jobId, 'evaluate', ctx.info.attempt), logFile).catch((err: unknown) => deps.log.warn({ jobId: p.jobId, err: String(err) }, 'evaluate: cannot upload evaluate.log to storage'));
  }
  if (cancelled) throw new CancelledFailure('evaluation cancelled');
  if (code === ExitCode.invalidInput) {
    throw ApplicationFailure.nonRetryable(`evaluation command rejected its input (exit 2); see ${logFile}:\n${tail(logFile)}`, ErrorType.InvalidParams, { exitCode: code });
  }
  if (code !== ExitCode.ok) {
    throw ApplicationFailure.retryable(`evaluation command exited with code ${code}; see ${logFile}:\n${tail(logFile)}`, ErrorType.TrainerFailed, { exitCode: code });
  }
  deps.log.info({ jobId: p.jobId, metrics }, 'evaluation finished');
  return { metrics, source: 'command' };
}
