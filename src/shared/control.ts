/**
 * Operator control of a job: the inputs of pause, resume, cancel, approve and reject (the same
 * whether they arrive as a Signal or an Update, from kiln, the Temporal CLI or the Web UI), their
 * parsing, and the one rule of what each can do in each state. Signals cannot answer, so a refused
 * signal is logged and dropped; an Update's validator refuses it with the same words, before anything
 * is recorded. Workflow-safe.
 */
import { z } from 'zod';
import type { Phase } from './progress';

const text = (max: number) =>
  z
    .string()
    .max(max)
    .transform((s) => s.trim())
    .optional();

export const CancelInputSchema = z.strictObject({ reason: text(2000), by: text(256) });
export const PauseInputSchema = z.strictObject({ reason: text(2000), by: text(256) });
export const ResumeInputSchema = PauseInputSchema;
export const ApprovalInputSchema = z.strictObject({ by: text(256), note: text(4000) });

export type CancelInput = z.input<typeof CancelInputSchema>;
export type PauseInput = z.input<typeof PauseInputSchema>;
export type ApprovalInput = z.input<typeof ApprovalInputSchema>;

export const CONTROL_ACTIONS = ['pause', 'resume', 'cancel', 'approve', 'reject'] as const;
export type ControlAction = (typeof CONTROL_ACTIONS)[number];

/** What an accepted control Update answers. */
export interface ControlResult {
  action: ControlAction;
  accepted: true;
  /** The phase the job is in (or moving to) once the action takes effect. */
  phase: Phase;
  /** Sequence number of this action among the job's accepted control actions. */
  seq: number;
  message: string;
}

/** The parsed input, or why it was refused: `cancel.reason: expected string, received number`. */
export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/** Parses a message payload; no input at all (or null) is an empty object. Never throws. */
export function parseControlInput<S extends z.ZodType>(schema: S, raw: unknown, what: string): Parsed<z.output<S>> {
  const r = schema.safeParse(raw === undefined || raw === null ? {} : raw);
  if (r.success) return { ok: true, value: r.data };
  const problems = r.error.issues.map((i) => `${[what, ...i.path.map(String)].join('.')}: ${i.message}`);
  return { ok: false, error: `invalid ${what} input: ${problems.join('; ')}` };
}

/** The state a control action is judged against. */
export interface ControlState {
  phase: Phase;
  /** Desired state: true from an accepted pause until an accepted resume. */
  paused: boolean;
  cancelRequested: string | null;
  approvalPending: boolean;
  approvalDecided: string | null;
}

const ENDED: readonly Phase[] = ['completed', 'failed', 'cancelled'];

/** Why a control action was refused: a stable code (for `--json` and scripts) and the words. */
export interface Refusal {
  code: 'INVALID_INPUT' | 'JOB_ENDED' | 'CANCELLING' | 'ALREADY_PAUSED' | 'NOT_TRAINING' | 'NOT_PAUSED' | 'ALREADY_DECIDED' | 'NOT_AWAITING_APPROVAL';
  message: string;
}

/** The ApplicationFailure type an Update validator refuses with (details: [Refusal]). */
export const CONTROL_REFUSED = 'ControlRefused';

/** Why this action cannot take effect now, or null when it can. One wording for Signals and Updates. */
export function controlRefusal(action: ControlAction, s: ControlState): Refusal | null {
  const no = (code: Refusal['code'], message: string): Refusal => ({ code, message });
  if (ENDED.includes(s.phase)) return no('JOB_ENDED', `the job already ended (${s.phase})`);
  if (s.cancelRequested !== null) return no('CANCELLING', action === 'cancel' ? `cancel already requested (${s.cancelRequested})` : `the job is being cancelled (${s.cancelRequested})`);
  switch (action) {
    case 'cancel':
      return null;
    case 'pause':
      if (s.paused) return no('ALREADY_PAUSED', `the job is already paused (phase ${s.phase}); resume it with resume`);
      return s.phase === 'training' || s.phase === 'queued' ? null : no('NOT_TRAINING', `the job is not training (phase ${s.phase}); only a training or queued job can be paused`);
    case 'resume':
      return s.paused ? null : no('NOT_PAUSED', `the job is not paused (phase ${s.phase})`);
    case 'approve':
    case 'reject':
      if (s.approvalDecided) return no('ALREADY_DECIDED', `the approval was already decided (${s.approvalDecided})`);
      return s.approvalPending ? null : no('NOT_AWAITING_APPROVAL', `no approval pending (phase ${s.phase}); only a job awaiting approval can be approved or rejected`);
  }
}
