/**
 * `evaluate`: runs the trainer's evaluation command on the held-out split, or takes the validation
 * metrics the trainer already emitted. Registered on the control worker and on GPU workers.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { ErrorType } from '../src/shared/errors';
import type { PreparedJob } from '../src/shared/spec';
import type { TrainResult } from '../src/shared/summary';
import { pidfileFor } from '../src/supervisor/pidfiles';
import { ExitCode, logTail, trainerEnv } from '../src/supervisor/protocol';
import { startTrainer } from '../src/supervisor/trainer';
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
    const metrics: Record<string, number> = {};
    const logFile = evaluateLogFile(p.workDir);
    const handle = startTrainer({
      argv: deps.trainerArgv(trainer.evaluate.command),
      env: trainerEnv({
        mode: 'evaluate',
        jobId: p.jobId,
        attempt: ctx.info.attempt,
        params: p.params,
        workDir: p.workDir,
        resumeFrom: '',
        modelPath: train.modelPath,
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
    if (cancelled) throw new CancelledFailure('evaluation cancelled');
    if (code === ExitCode.invalidInput) {
      throw ApplicationFailure.nonRetryable(`evaluation command rejected its input (exit 2); see ${logFile}:\n${tail(logFile)}`, ErrorType.InvalidParams, { exitCode: code });
    }
    if (code !== ExitCode.ok) {
      throw ApplicationFailure.retryable(`evaluation command exited with code ${code}; see ${logFile}:\n${tail(logFile)}`, ErrorType.TrainerFailed, { exitCode: code });
    }
    deps.log.info({ jobId: p.jobId, metrics }, 'evaluation finished');
    return { metrics, source: 'command' };
  };
}
