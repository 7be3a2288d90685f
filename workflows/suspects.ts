/**
 * Checkpoints an attempt failed on (issue 16, item 2). A trainer failure (not an interruption) before
 * the first progress after resuming from a checkpoint makes that checkpoint suspect: the next attempt
 * skips it and resumes from the previous verified one. A checkpoint that fails a second time is
 * quarantined: no attempt resumes from it again, and it is pinned (never pruned) until the job ends,
 * so it can be inspected. Both are reported in `kiln status` and the summary.
 *
 * A checkpoint is known by its path and, where recorded, its sha256: a trainer that later writes a
 * good checkpoint at the same path is not held to the old one's record. Carried across
 * continue-as-new (continueAsNew.ts). Not a workflow: workflows/index.ts does not export it.
 */
import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';
import { CheckpointRefSchema, type CheckpointRef, type SkipRef } from '../src/shared/progress';

export interface SuspectCheckpoint {
  step: number;
  path: string;
  sha256?: string;
  /** Attempts that failed right after resuming from it. */
  failedAttempts: number[];
  quarantined: boolean;
  cause: string;
}

const MAX_TRACKED = 100;

export class CheckpointSuspects {
  list: SuspectCheckpoint[] = [];
  /** The checkpoint the last failed attempt was suspected on: the next attempt skips it. */
  private lastSuspect: string | null = null;
  /**
   * A `kiln retry --from-checkpoint` went back to `toStep` from a run that had reached `until`: until
   * the job's own newest checkpoint passes `until`, no attempt resumes from a checkpoint newer than
   * that newest one (the older run's checkpoints, in the manifest or not, are stepped over).
   */
  rewound: { toStep: number; until: number } | null = null;

  private key(c: { path: string; sha256?: string }): string {
    return `${c.path}\0${c.sha256 ?? ''}`;
  }

  /**
   * An attempt that resumed from `from` failed (trainer failure) before its first progress. Returns
   * the record, now suspect or quarantined.
   */
  failedAfterResume(from: CheckpointRef, attempt: number, cause: string): SuspectCheckpoint {
    let s = this.list.find((x) => this.key(x) === this.key(from));
    if (!s) {
      s = { step: from.step, path: from.path, ...(from.sha256 ? { sha256: from.sha256 } : {}), failedAttempts: [], quarantined: false, cause };
      if (this.list.length >= MAX_TRACKED) this.list.shift();
      this.list.push(s);
    }
    if (!s.failedAttempts.includes(attempt)) s.failedAttempts.push(attempt);
    s.cause = cause.slice(0, 1000);
    s.quarantined = s.failedAttempts.length >= 2;
    this.lastSuspect = this.key(s);
    return s;
  }

  /** Any other outcome of an attempt: the next one may resume from the suspect again. */
  attemptEnded(): void {
    this.lastSuspect = null;
  }

  /** What the next attempt must not resume from: every quarantined checkpoint and the newest suspect. */
  skipList(): SkipRef[] {
    return this.list
      .filter((s) => s.quarantined || this.key(s) === this.lastSuspect)
      .map((s) => ({ path: s.path, ...(s.sha256 ? { sha256: s.sha256 } : {}), quarantined: s.quarantined }));
  }

  /** Whether the last failed attempt was suspected on this checkpoint. */
  isSuspect(c: { path: string; sha256?: string }): boolean {
    return this.lastSuspect !== null && this.lastSuspect === this.key(c);
  }

  /** The newest step the next attempt may resume from after a retry went back (see `rewound`), or undefined. */
  maxResumeStep(newestStep: number): number | undefined {
    if (!this.rewound || newestStep > this.rewound.until) return undefined;
    return Math.max(newestStep, this.rewound.toStep);
  }

  snapshot(): { list: SuspectCheckpoint[]; lastSuspect: string | null; rewound: CheckpointSuspects['rewound'] } {
    return { list: this.list, lastSuspect: this.lastSuspect, rewound: this.rewound };
  }

  static restore(raw: unknown): CheckpointSuspects {
    const out = new CheckpointSuspects();
    const r = raw as { list?: unknown; lastSuspect?: unknown } | null | undefined;
    if (r && Array.isArray(r.list)) {
      out.list = r.list
        .filter((s): s is SuspectCheckpoint => typeof s === 'object' && s !== null && typeof (s as SuspectCheckpoint).path === 'string' && Array.isArray((s as SuspectCheckpoint).failedAttempts))
        .slice(-MAX_TRACKED);
    }
    out.lastSuspect = typeof r?.lastSuspect === 'string' ? r.lastSuspect : null;
    const rw = (r as { rewound?: { toStep?: unknown; until?: unknown } } | null | undefined)?.rewound;
    if (typeof rw?.toStep === 'number' && typeof rw.until === 'number') out.rewound = { toStep: rw.toStep, until: rw.until };
    return out;
  }
}

/**
 * A failed attempt: a trainer failure whose details show it resumed from a checkpoint and failed
 * before its first step makes that checkpoint suspect (or quarantined). Any other trainer failure
 * lets the next attempt use the suspect again; an interruption changes nothing. Returns the record
 * that changed, or null.
 */
export function noteFailure(s: CheckpointSuspects, attempt: number, kind: 'interruption' | 'trainer', err: unknown, cause: string): SuspectCheckpoint | null {
  if (kind === 'interruption') return null;
  const c = err instanceof ActivityFailure ? err.cause : err;
  const d = c instanceof ApplicationFailure ? (c.details?.[0] as { resumedFrom?: unknown; firstStep?: unknown } | undefined) : undefined;
  const from = CheckpointRefSchema.safeParse(d?.resumedFrom);
  if (from.success && d?.firstStep === null) return s.failedAfterResume(from.data, attempt, cause);
  s.attemptEnded();
  return null;
}
