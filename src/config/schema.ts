/**
 * The documented shape of temporal.yaml. Parsed once (load.ts), then compiled to a form with
 * durations in ms and absolute paths. Every object is strict: a typo in a key is an error, never
 * silently ignored.
 */
import { z } from 'zod';
import { parseDuration } from '../shared/duration';
import { parseSchedule } from '../shared/cron';
import { NAME_HINT, NAME_RE } from '../shared/names';
import { ParamSpecSchema } from '../shared/params';

const duration = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `${JSON.stringify(v)} is not a valid ${what} (use a non-negative duration like "500ms", "10s", "5m", "6h", "1d")`,
      });
      return z.NEVER;
    }
    return ms;
  });

const name = z.string().regex(NAME_RE, { message: `invalid name: ${NAME_HINT}` });

const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };
const bytes = (what: string) =>
  z.union([z.number().int().min(0), z.string()]).transform((v, ctx) => {
    if (typeof v === 'number') return v;
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
    const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
    if (!m || unit === undefined) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a valid ${what} (use bytes or a size like "512MiB", "100GiB", "2TB")` });
      return z.NEVER;
    }
    return Math.round(Number(m[1]) * unit);
  });
const port = z.number().int().min(0).max(65535);

export const ServerSchema = z.strictObject({
  /** host:port of an existing cluster. Empty: `kiln dev` starts a local dev server. */
  address: z.string().default('').describe('host:port of an existing Temporal cluster; empty starts a dev server'),
  namespace: z.string().min(1).default('default'),
  tls: z
    .strictObject({
      cert: z.string().optional(),
      key: z.string().optional(),
      ca: z.string().optional(),
      serverName: z.string().optional(),
    })
    .optional(),
  /** API key for Temporal Cloud; use `${TEMPORAL_API_KEY}`, never a literal. */
  apiKey: z.string().optional(),
});

export const DevSchema = z.strictObject({
  port: port.default(7233),
  uiPort: port.default(8233),
  metricsPort: port.default(0).describe('dev server metrics port; 0 picks none'),
  ip: z.string().default('127.0.0.1'),
  dbFile: z.string().default('temporal.sqlite').describe('relative to the state folder'),
});

export const PoolSchema = z.strictObject({
  /** `auto` asks nvidia-smi; a list pins device ids. With no GPU, `slots` CPU slots are used. */
  devices: z.union([z.literal('auto'), z.array(z.union([z.number().int().min(0), z.string().regex(/^[A-Za-z0-9:-]+$/)])).min(1)]).default('auto'),
  /** Concurrent jobs on one worker of this pool when `devices` is auto and no GPU is found. */
  slots: z.number().int().min(1).max(256).default(1),
  metricsPort: port.default(9465),
});

export const WorkersSchema = z.strictObject({
  control: z.strictObject({ metricsPort: port.default(9464) }).prefault({}),
  pools: z.record(name, PoolSchema).default({ gpu: PoolSchema.parse({}) }),
  /**
   * How often a running trainer's progress is reported to its workflow (each report is 4 history
   * events): at most 10 reports at once, then one per interval. Heartbeats (what `kiln status` and
   * `kiln watch` read) are faster.
   */
  progressInterval: duration('progress interval').default(60_000),
  /** A training job continues as new before its run's history reaches this many events (Temporal's hard limit is 51,200). */
  historyEvents: z.number().int().min(100).max(50_000).default(10_000),
  /** trainer.log is rotated past maxBytes; `keep` files in all (trainer.log, trainer.log.1, …). */
  trainerLog: z.strictObject({ maxBytes: bytes('trainer log cap').default(64 * 2 ** 20), keep: z.number().int().min(1).max(100).default(2) }).prefault({}),
});

export const TrainerSchema = z.strictObject({
  description: z.string().optional(),
  /**
   * argv, spawned without a shell. Relative paths resolve against the config file's folder, then
   * Kiln's install folder (the shipped examples/); a name without a slash is looked up on PATH.
   * `kiln config check`, `kiln doctor` and each GPU worker at start check that it can start.
   */
  command: z.array(z.string().min(1)).min(1),
  /** A preflight argv that exits 0 when this trainer can run here (e.g. its framework imports); `kiln config check` runs it. */
  check: z.array(z.string().min(1)).min(1).optional(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
  params: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), ParamSpecSchema).default({}),
  evaluate: z
    .strictObject({
      /** Run this command after training; without it, Kiln uses the validation metrics the trainer emitted. */
      command: z.array(z.string().min(1)).min(1).optional(),
      queue: z.enum(['control', 'gpu']).default('control'),
      timeout: duration('evaluate timeout').default(600_000),
    })
    .prefault({}),
});

const schedule = z.string().superRefine((v, ctx) => {
  const parsed = parseSchedule(v);
  if ('error' in parsed) ctx.addIssue({ code: 'custom', message: parsed.error });
});

export const RetrainSchema = z.strictObject({
  schedule: z.union([schedule, z.array(schedule).min(1)]),
  timezone: z.string().optional(),
  jitter: duration('jitter').default(0),
  /** Small by default, so a long outage does not launch a backlog storm. */
  catchupWindow: duration('catchup window').default(60_000),
  pauseOnFailure: z.boolean().default(false),
  /** Cooldown between trainings of the same model. */
  minInterval: duration('min interval').default(0),
  when: z
    .strictObject({
      dataChanged: z.boolean().default(true),
      maxAge: duration('max age').optional(),
      always: z.boolean().default(false),
    })
    .prefault({}),
  paused: z.boolean().default(false),
});

const ON_PROMOTE_SHAPE =
  'onPromote is either an argv list, e.g. [curl, -fsS, -X, POST, "http://serving:8080/reload"], or { signal: { workflowId: serving-spirals, name: kiln.promoted } }';

/** `promotion.onPromote: { signal: { workflowId, name } }`: signal that workflow once per production change. */
export const OnPromoteSignalSchema = z.strictObject(
  {
    signal: z.strictObject(
      {
        workflowId: z.string({ error: 'required: the id of the running workflow to signal, e.g. serving-spirals' }).trim().min(1, 'must not be empty: the id of the running workflow to signal').max(1000),
        name: z.string({ error: 'required: the signal name the workflow handles, e.g. kiln.promoted' }).trim().min(1, 'must not be empty: the signal name the workflow handles, e.g. kiln.promoted').max(200),
      },
      { error: (iss) => (iss.code === 'unrecognized_keys' ? `unknown key(s) ${iss.keys.join(', ')}: signal takes only workflowId and name` : 'signal must be { workflowId: ID, name: SIGNAL }') },
    ),
  },
  { error: (iss) => (iss.code === 'unrecognized_keys' ? `unknown key(s) ${iss.keys.join(', ')}: ${ON_PROMOTE_SHAPE}` : ON_PROMOTE_SHAPE) },
);

const OnPromoteArgvSchema = z.array(z.string().min(1)).min(1);
export type OnPromoteConfig = z.output<typeof OnPromoteArgvSchema> | z.output<typeof OnPromoteSignalSchema>;

/** An argv list or a signal, told apart by shape so each gets its own clear error. */
const OnPromoteSchema = z.unknown().transform((v, ctx): OnPromoteConfig => {
  const schema = Array.isArray(v) ? OnPromoteArgvSchema : v && typeof v === 'object' ? OnPromoteSignalSchema : null;
  if (!schema) {
    ctx.addIssue({ code: 'custom', message: ON_PROMOTE_SHAPE });
    return z.NEVER;
  }
  const r = schema.safeParse(v);
  if (r.success) return r.data;
  for (const i of r.error.issues) ctx.addIssue({ code: 'custom', message: i.message, path: i.path });
  return z.NEVER;
});

export const PromotionSchema = z.strictObject({
  metric: z.string().min(1),
  direction: z.enum(['min', 'max']),
  minImprovement: z.number().min(0).default(0),
  improvementKind: z.enum(['absolute', 'relative']).default('absolute'),
  mode: z.enum(['auto', 'approval']).default('auto'),
  approvalTimeout: duration('approval timeout').default(86_400_000),
  /**
   * Once per production change (promotion, approval, manual promote, rollback): an argv run without a
   * shell, or a signal to a named workflow (src/registry/onPromote.ts, docs/registry.md).
   */
  onPromote: OnPromoteSchema.optional(),
});

export const RetentionSchema = z.strictObject({
  keepLatest: z.number().int().min(1).default(2),
  keepBest: z.number().int().min(0).default(1),
  metric: z.string().default('loss'),
  direction: z.enum(['min', 'max']).default('min'),
});

export const TimeoutsSchema = z.strictObject({
  heartbeat: duration('heartbeat timeout').default(10_000),
  stall: duration('stall timeout').default(120_000),
  startToClose: duration('start-to-close timeout').default(7 * 86_400_000),
  cancelGrace: duration('cancel grace').default(10_000),
  /** Trainer failures (crash, non-zero exit, stall) in a row without progress before the job fails. */
  maxAttempts: z.number().int().min(1).max(100).default(5),
  /** Interruptions (worker lost or drained, attempt superseded) before the job fails; unset: unlimited. */
  maxInterruptions: z.number().int().min(1).max(100_000).optional(),
});

/**
 * How a dataset's version is found. `metadata`: names, sizes and mtimes of local files (never reads
 * them); `content`: a streaming hash of local bytes in a worker thread; `s3`: object ETags under the
 * URI's prefix; `command`: an argv that prints the version (no shell; `{dataset}` is replaced by the
 * dataset string); `uri`: the dataset text itself (an immutable, versioned URI).
 */
export const DatasetVersionSchema = z.discriminatedUnion('resolver', [
  z.strictObject({ resolver: z.literal('metadata') }),
  z.strictObject({ resolver: z.literal('content') }),
  z.strictObject({ resolver: z.literal('uri') }),
  z.strictObject({
    resolver: z.literal('command'),
    command: z.array(z.string().min(1)).min(1),
    timeout: duration('resolver timeout').default(30_000),
  }),
  z.strictObject({
    resolver: z.literal('s3'),
    /** S3-compatible endpoint (MinIO, Ceph, R2 …); empty: AWS. Credentials come from the AWS environment. */
    endpoint: z.string().optional(),
    region: z.string().default('us-east-1'),
    forcePathStyle: z.boolean().default(false),
    maxObjects: z.number().int().min(1).default(1_000_000),
  }),
]);

export const DatasetsSchema = z.strictObject({
  /** Local data may live only under these folders (relative to temporal.yaml). */
  roots: z.array(z.string().min(1)).min(1).default(['.']),
  /** The resolver for local paths without a per-model one. */
  local: z.enum(['metadata', 'content']).default('metadata'),
  /** URI schemes and how their versions are found; a scheme not listed is opaque (resolver `uri`). */
  schemes: z.record(z.string().regex(/^[a-z][a-z0-9+.-]*$/, 'a URI scheme: lower-case letters, digits, "+", "." or "-"'), DatasetVersionSchema).default({}),
  /** Caps of the local resolvers: total bytes hashed (content), files walked, time. */
  maxBytes: bytes('dataset size cap').default(2 ** 40),
  maxFiles: z.number().int().min(1).default(1_000_000),
  timeout: duration('dataset resolver timeout').default(600_000),
});

/** An S3 bucket name (3-63 characters: lower-case letters, digits, dots, dashes). */
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Empty (from an unset `${VAR:-}`) means "not given": the AWS default credential chain is used. */
const secret = z.string().optional().transform((v) => (v ? v : undefined));

/**
 * Where checkpoints, models and logs live so any host can resume a job. `local`: a folder (one host,
 * or a shared filesystem with atomic rename); `s3`: AWS S3 or an S3-compatible store.
 */
export const StorageSchema = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('local').default('local'),
    path: z.string().default('').describe('empty: <state>/storage; relative to the config file'),
  }),
  z
    .strictObject({
      kind: z.literal('s3'),
      bucket: z.string().regex(BUCKET_RE, { message: 'not a valid bucket name (3-63 characters: a-z, 0-9, ".", "-")' }),
      prefix: z
        .string()
        .default('')
        .transform((p) => p.replace(/^\/+|\/+$/g, ''))
        .describe('key prefix inside the bucket, e.g. "kiln/prod"'),
      /** S3-compatible endpoint (MinIO, Ceph RGW, R2, GCS interoperability); empty: AWS. */
      endpoint: z
        .string()
        .regex(/^https?:\/\/[^\s/]+/, { message: 'an http(s):// URL, e.g. "https://minio.internal:9000"' })
        .optional()
        .or(z.literal('').transform(() => undefined)),
      region: z.string().min(1).default('us-east-1'),
      /** Path-style URLs (`endpoint/bucket/key`); most S3-compatible stores need it. */
      forcePathStyle: z.boolean().default(false),
      /** Use `${AWS_ACCESS_KEY_ID}` etc., never a literal; unset: the AWS default chain (env, profile, role). */
      accessKeyId: secret,
      secretAccessKey: secret,
      sessionToken: secret,
      /** Parallel uploads: files of a checkpoint, and parts of one large file. */
      concurrency: z.number().int().min(1).max(64).default(4),
      /** Multipart part size; files up to this size go in one PUT. S3 needs at least 5 MiB. */
      partSize: bytes('part size')
        .default(16 * 2 ** 20)
        .refine((n) => n >= 5 * 2 ** 20 && n <= 5 * 2 ** 30, { message: 'partSize must be between 5MiB and 5GiB (S3 multipart limits)' }),
    })
    .superRefine((s, ctx) => {
      if (!s.accessKeyId !== !s.secretAccessKey) {
        ctx.addIssue({ code: 'custom', path: [s.accessKeyId ? 'secretAccessKey' : 'accessKeyId'], message: 'set both accessKeyId and secretAccessKey, or neither (the AWS default credential chain)' });
      }
    }),
], { error: (iss) => (iss.code === 'invalid_union' ? 'kind must be "local" (the default) or "s3"' : undefined) });

/**
 * The model registry. Empty `url`: the embedded SQLite file in the state folder (one host). A
 * `postgres://user:${PGPASSWORD}@host:5432/db` URL: one PostgreSQL database every host shares.
 */
export const RegistrySchema = z.strictObject({
  url: z
    .string()
    .optional()
    .transform((v) => (v ? v : undefined))
    .refine((v) => v === undefined || /^postgres(ql)?:\/\/[^\s/]+/.test(v), {
      message: 'a postgres:// URL, e.g. "postgres://kiln:${PGPASSWORD}@db.internal:5432/kiln" (leave it empty for the embedded SQLite registry)',
    }),
});

export const ModelSchema = z.strictObject({
  description: z.string().optional(),
  trainer: name,
  /** A path under datasets.roots (file or folder) or a dataset URI; see datasets: for how its version is found. */
  dataset: z.string().min(1),
  /** This model's version resolver, overriding the one datasets: chooses for its dataset. */
  datasetVersion: DatasetVersionSchema.optional(),
  params: z.record(z.string(), z.unknown()).default({}),
  pool: name.default('gpu'),
  gpus: z.number().int().min(0).max(64).default(1),
  requiredMetrics: z.array(z.string()).default([]),
  promotion: PromotionSchema.optional(),
  retrain: RetrainSchema.optional(),
  retention: RetentionSchema.partial().optional(),
  timeouts: TimeoutsSchema.partial().optional(),
  /**
   * When every recorded checkpoint of a job is unreachable (local storage on a dead host, objects
   * deleted): `fail` (default) fails the job with CheckpointsUnreachable; `restart` trains from step 0
   * and says so in status and the summary.
   */
  onLostCheckpoints: z.enum(['fail', 'restart']).optional(),
});

export const ConfigSchema = z.strictObject({
  version: z.literal(1).default(1),
  server: ServerSchema.prefault({}),
  dev: DevSchema.prefault({}),
  /** State folder; KILN_HOME overrides it. Relative to the config file's folder. */
  state: z.strictObject({ home: z.string().default('.kiln') }).prefault({}),
  workers: WorkersSchema.prefault({}),
  trainers: z.record(name, TrainerSchema).default({}),
  models: z.record(name, ModelSchema).default({}),
  artifacts: z.strictObject({ root: z.string().default('') }).prefault({}).describe('empty: <state>/artifacts'),
  retention: RetentionSchema.prefault({}),
  timeouts: TimeoutsSchema.prefault({}),
  datasets: DatasetsSchema.prefault({}),
  storage: StorageSchema.prefault({}),
  registry: RegistrySchema.prefault({}),
  logging: z.strictObject({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info') }).prefault({}),
});

export type RawConfig = z.input<typeof ConfigSchema>;
export type ParsedConfig = z.output<typeof ConfigSchema>;
export type TrainerConfig = z.output<typeof TrainerSchema>;
export type ModelConfig = z.output<typeof ModelSchema>;
export type RetentionConfig = z.output<typeof RetentionSchema>;
export type TimeoutsConfig = z.output<typeof TimeoutsSchema>;
export type PromotionConfig = z.output<typeof PromotionSchema>;
export type RetrainConfig = z.output<typeof RetrainSchema>;
export type PoolConfig = z.output<typeof PoolSchema>;
export type DatasetsConfig = z.output<typeof DatasetsSchema>;
export type DatasetVersionConfig = z.output<typeof DatasetVersionSchema>;
export type StorageConfig = z.output<typeof StorageSchema>;
export type RegistryConfig = z.output<typeof RegistrySchema>;
