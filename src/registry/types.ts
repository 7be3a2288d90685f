export type Stage = 'candidate' | 'production' | 'archived';

export type DecisionKind =
  | 'promoted'
  | 'kept-candidate'
  | 'rejected'
  | 'approved'
  | 'rollback'
  | 'archived'
  | 'manual-promote';

export interface Decision {
  at: string;
  kind: DecisionKind;
  reason: string;
  by: string | null;
}

/** A decision as handed to the registry; `at` defaults to now. */
export interface DecisionInput {
  kind: DecisionKind;
  reason: string;
  by?: string | null;
  at?: string;
}

export interface ModelVersion {
  model: string;
  /** Monotonically increasing per model, starting at 1. */
  version: number;
  /** Temporal workflow id of the job that produced it; the idempotency key. */
  jobId: string;
  runId: string;
  trainer: string;
  params: Record<string, unknown>;
  datasetFingerprint: string;
  baseCheckpoint: string | null;
  metrics: Record<string, number>;
  artifactPath: string | null;
  /** What of the job's artifacts folder is in object storage (storage.kind: s3), the model included; empty otherwise. */
  artifacts: StoredArtifact[];
  /** The checkpoint the model came from; pinned against retention. */
  checkpointPath: string | null;
  createdAt: string;
  stage: Stage;
  complete: boolean;
  missingMetrics: string[];
  /** Oldest first. */
  decisions: Decision[];
}

export type { StoredArtifact } from '../shared/summary';
import type { StoredArtifact } from '../shared/summary';

export interface RegisterInput {
  model: string;
  jobId: string;
  runId: string;
  trainer: string;
  params: Record<string, unknown>;
  datasetFingerprint: string;
  baseCheckpoint: string | null;
  /** Non-finite values (NaN, ±Infinity) are dropped and count as missing. */
  metrics: Record<string, number | null | undefined>;
  artifactPath: string | null;
  /** Stored artifacts (storage.kind: s3); none by default. */
  artifacts?: StoredArtifact[];
  checkpointPath: string | null;
  /** Metrics a version must have to be promotable. */
  requiredMetrics: string[];
  /** Defaults to now. Pass it explicitly when it must be deterministic. */
  createdAt?: string;
}

export interface RegisterResult {
  version: ModelVersion;
  /** False when the jobId was already registered (nothing was written). */
  created: boolean;
}

/** Kinds that make a version production through `promote`. */
export type PromoteKind = 'promoted' | 'approved' | 'manual-promote' | 'rollback';

export interface PromoteOptions {
  reason: string;
  by?: string | null;
  /** Defaults to 'promoted'. */
  kind?: PromoteKind;
}

export interface RollbackOptions {
  /** Target version; omitted → the most recent earlier version that was production before. */
  to?: number;
  reason: string;
  by?: string | null;
}

/** One change of a model's production version (a promotion, approval, manual promote or rollback). */
export interface ProductionChange {
  /** The stage-change id (stage_history row): the key the onPromote hook is idempotent by. */
  id: number;
  model: string;
  version: number;
  at: string;
  /** The onPromote hook has run for this change (promotion_hooks). */
  hookRan: boolean;
}

export interface ListFilter {
  model?: string;
  stage?: Stage;
}

export type RegistryErrorCode =
  | 'UNKNOWN_MODEL'
  | 'UNKNOWN_VERSION'
  | 'INCOMPLETE'
  | 'NO_PREVIOUS'
  | 'NO_PRODUCTION'
  | 'JOB_CONFLICT'
  | 'INVALID_INPUT'
  | 'SCHEMA_TOO_NEW'
  /** The database could not be reached or refused the login; retrying may help, a config fix will. */
  | 'UNAVAILABLE';

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  readonly code: RegistryErrorCode;
  readonly model: string | null;
  readonly version: number | null;

  constructor(
    code: RegistryErrorCode,
    message: string,
    context: { model?: string | null; version?: number | null } = {},
  ) {
    super(message);
    this.code = code;
    this.model = context.model ?? null;
    this.version = context.version ?? null;
  }
}

/**
 * Storage-agnostic model registry (SQLite in the state folder, or PostgreSQL shared by every host).
 * Workflows and activities depend on this interface only. Every call is async: a shared backend
 * answers over the network.
 */
export interface ModelRegistry {
  /** Where it lives, secrets masked: a file path or postgres://user:***@host/db. */
  readonly where: string;
  /** Idempotent by jobId: a repeated call returns the existing version with created=false. */
  register(input: RegisterInput): Promise<RegisterResult>;
  get(model: string, version: number): Promise<ModelVersion | null>;
  getByJob(jobId: string): Promise<ModelVersion | null>;
  /** Ordered by model, then version. */
  list(filter?: ListFilter): Promise<ModelVersion[]>;
  production(model: string): Promise<ModelVersion | null>;
  /**
   * Makes `version` production and archives the previous production version,
   * recording a decision on both. Promoting the current production version is
   * a no-op (safe to retry). Throws RegistryError and changes nothing when the
   * model/version is unknown or the version is incomplete.
   */
  promote(model: string, version: number, opts: PromoteOptions): Promise<ModelVersion>;
  /** Appends to the version's decision log; an exact repeat of the latest decision is ignored. */
  recordDecision(model: string, version: number, decision: DecisionInput): Promise<ModelVersion>;
  /** Re-points production; returns the new production version. */
  rollback(model: string, opts: RollbackOptions): Promise<ModelVersion>;
  /** Checkpoint and artifact paths of every registered version, sorted, deduplicated. */
  pinnedCheckpoints(): Promise<string[]>;
  /** True when deleting `path` would delete, or be inside, a pinned path. */
  isPinned(path: string): Promise<boolean>;
  /** createdAt of the newest version of the model, or null if it has none. */
  lastTrainedAt(model: string): Promise<string | null>;
  /** The latest change that made (model, version) production, or null if it never was. */
  productionChange(model: string, version: number): Promise<ProductionChange | null>;
  /** The model's production changes with a stage-change id above `afterId`, oldest first. */
  productionChanges(model: string, afterId: number): Promise<ProductionChange[]>;
  /** Records that the onPromote hook ran for a change; false when it was recorded already. */
  recordHookRun(change: ProductionChange, by: string): Promise<boolean>;
  /** The schema version the database is at (after migrations). */
  schemaVersion(): Promise<number>;
  close(): Promise<void>;
}
