/**
 * The trainer contract, both directions, in one module: the `KILN_*` environment a trainer (or an
 * evaluation command) starts with, the JSON-lines events it writes to fd 3, what its exit code means,
 * and the tail of its log that failures quote. Used by the train and evaluate activities and the bench.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { ExitCode } from './exitCodes';
import { artifactDir, checkpointDir } from './workdir';

export { ExitCode };

export const PROTOCOL_VERSION = '1';
/** The fd a trainer writes its events to. */
export const EVENTS_FD = 3;

export interface TrainerEnvInput {
  mode: 'train' | 'evaluate';
  jobId: string;
  attempt: number;
  params: Record<string, unknown>;
  workDir: string;
  /** Checkpoint to resume from; '' for none. */
  resumeFrom: string;
  /** The trained model, for `evaluate`. */
  modelPath?: string;
  gpuIds: readonly string[];
  /** The trainer's `env` from temporal.yaml; KILN_* always wins over it. */
  trainerEnv?: Record<string, string>;
}

/** The environment a trainer starts with: the worker's, the trainer's configured env, then KILN_*. */
export function trainerEnv(i: TrainerEnvInput): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ...i.trainerEnv,
    KILN_PROTOCOL: PROTOCOL_VERSION,
    KILN_MODE: i.mode,
    KILN_JOB_ID: i.jobId,
    KILN_ATTEMPT: String(i.attempt),
    KILN_PARAMS: JSON.stringify(i.params),
    KILN_WORK_DIR: i.workDir,
    KILN_CHECKPOINT_DIR: checkpointDir(i.workDir),
    KILN_ARTIFACT_DIR: artifactDir(i.workDir),
    ...(i.modelPath !== undefined ? { KILN_MODEL_PATH: i.modelPath } : {}),
    KILN_RESUME_FROM: i.resumeFrom,
    KILN_EVENTS_FD: String(EVENTS_FD),
    CUDA_VISIBLE_DEVICES: i.gpuIds.join(','),
  };
}

export const MAX_EVENT_LINE = 64 * 1024;

const metricsRecord = z.record(z.string(), z.unknown()).transform((m) => {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(m)) if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  return out;
});
const nonNegInt = z.number().int().min(0);

export const TrainerEventSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('progress'),
    step: nonNegInt,
    total_steps: nonNegInt.nullish(),
    epoch: z.number().min(0).nullish(),
    total_epochs: z.number().min(0).nullish(),
    metrics: metricsRecord.default({}),
  }),
  z.object({ type: z.literal('checkpoint'), step: nonNegInt, path: z.string().min(1).max(4096), metrics: metricsRecord.default({}) }),
  z.object({ type: z.literal('metrics'), split: z.string().min(1).max(64), values: metricsRecord }),
  z.object({ type: z.literal('artifact'), name: z.string().min(1).max(128), path: z.string().min(1).max(4096) }),
]);
export type TrainerEvent = z.infer<typeof TrainerEventSchema>;

/** One line of the event stream: the event, or why it is malformed. */
export function parseEventLine(line: string): { event: TrainerEvent } | { malformed: string } {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    return { malformed: 'not JSON' };
  }
  const r = TrainerEventSchema.safeParse(json);
  if (!r.success) return { malformed: r.error.issues.map((i) => `${i.path.join('.') || 'event'}: ${i.message}`).join('; ') };
  return { event: r.data };
}

/** `was killed by signal 9` / `exited with code 1`. */
export function describeExit(code: number): string {
  return code > ExitCode.signalBase ? `was killed by signal ${code - ExitCode.signalBase}` : `exited with code ${code}`;
}

/** The last `lines` lines of a log, read from at most its last `maxBytes` bytes; '' if unreadable. */
export function logTail(file: string, lines: number, maxBytes: number): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, maxBytes);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return buf.toString('utf8').split('\n').slice(-lines - 1).join('\n').trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}
