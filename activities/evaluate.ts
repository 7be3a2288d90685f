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
import { startTrainer } from '../src/supervisor/trainer';
import type { CommonDeps } from './deps';

export interface EvaluateInput {
  prepared: PreparedJob;
  train: TrainResult;
}

export interface EvaluateResult {
  metrics: Record<string, number>;
  source: 'command' | 'training';
}

function tail(file: string, lines = 20): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-16 * 1024).split('\n').slice(-lines - 1).join('\n').trim();
  } catch {
    return '';
  }
}

export function createEvaluate(deps: CommonDeps) {
  return async function evaluate({ prepared: p, train }: EvaluateInput): Promise<EvaluateResult> {
    const trainer = deps.config.trainers[p.spec.trainer];
    if (!trainer?.evaluate.command) return { metrics: train.validation, source: 'training' };
    if (!train.modelPath) {
      throw ApplicationFailure.nonRetryable('the trainer announced no "model" artifact, so there is nothing to evaluate', ErrorType.TrainerFailed);
    }
    const ctx = Context.current();
    const metrics: Record<string, number> = {};
    const logFile = path.join(p.workDir, 'evaluate.log');
    const handle = startTrainer({
      argv: deps.trainerArgv(trainer.evaluate.command),
      env: {
        ...process.env,
        ...trainer.env,
        KILN_PROTOCOL: '1',
        KILN_MODE: 'evaluate',
        KILN_JOB_ID: p.jobId,
        KILN_ATTEMPT: String(ctx.info.attempt),
        KILN_PARAMS: JSON.stringify(p.params),
        KILN_WORK_DIR: p.workDir,
        KILN_CHECKPOINT_DIR: path.join(p.workDir, 'checkpoints'),
        KILN_ARTIFACT_DIR: path.join(p.workDir, 'artifacts'),
        KILN_MODEL_PATH: train.modelPath,
        KILN_RESUME_FROM: '',
        KILN_EVENTS_FD: '3',
        CUDA_VISIBLE_DEVICES: train.gpuIds.join(','),
      },
      cwd: p.workDir,
      logFile,
      pidfile: pidfileFor(deps.config.home, `${p.jobId}.evaluate`),
      graceMs: p.timeouts.cancelGraceMs,
      onEvent: (e) => {
        if (e.type === 'metrics') Object.assign(metrics, e.values);
        ctx.heartbeat();
      },
      onMalformed: (line, why) => deps.log.warn({ jobId: p.jobId, line: line.slice(0, 200), why }, 'evaluate: malformed trainer event ignored'),
    });
    let cancelled = false;
    ctx.cancelled.catch(() => {
      cancelled = true;
      void handle.stop(p.timeouts.cancelGraceMs);
    });
    const ticker = setInterval(() => ctx.heartbeat(), 500);
    const code = await handle.exited.finally(() => clearInterval(ticker));
    if (cancelled) throw new CancelledFailure('evaluation cancelled');
    // Exit 2 means the command rejected its input (protocol): retrying cannot help.
    if (code === 2) {
      throw ApplicationFailure.nonRetryable(`evaluation command rejected its input (exit 2); see ${logFile}:\n${tail(logFile)}`, ErrorType.InvalidParams, { exitCode: code });
    }
    if (code !== 0) {
      throw ApplicationFailure.retryable(`evaluation command exited with code ${code}; see ${logFile}:\n${tail(logFile)}`, ErrorType.TrainerFailed, { exitCode: code });
    }
    deps.log.info({ jobId: p.jobId, metrics }, 'evaluation finished');
    return { metrics, source: 'command' };
  };
}
