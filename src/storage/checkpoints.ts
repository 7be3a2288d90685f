/**
 * Checkpoints in the object store. A checkpoint (a file, or a folder like HF `checkpoint-N/`) goes up
 * under a prefix as
 *
 *   <prefix>/files/<path>     every file
 *   <prefix>/manifest.json    each file's size, sha256 and ETag
 *   <prefix>/COMPLETE         the completion marker, written last, holding the manifest's sha256
 *
 * so a host that dies mid-upload leaves no marker, and verification (marker → manifest → every
 * object's size, ETag and, where the store keeps it, sha256) never passes for a half checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { CheckpointNotVerified, ObjectNotFound, StorageError } from './errors';
import { sha256, sha256File } from './hash';
import { joinKey, type ObjectStore } from './types';

const MANIFEST = 'manifest.json';
const MARKER = 'COMPLETE';
const FILES = 'files';
const segment = z.string().regex(/^(?!\.\.?$)[^/\\\0]+$/, 'a single path segment');

const CheckpointFileSchema = z.object({
  /** `/`-separated, relative to the checkpoint (a file checkpoint: its own name). */
  path: z.string().refine((p) => p.split('/').every((s) => segment.safeParse(s).success), 'a relative path'),
  size: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  etag: z.string(),
});
export const CheckpointManifestSchema = z.object({
  version: z.literal(1),
  /** The local name: `model-600.pt` or `checkpoint-600`. */
  name: segment,
  kind: z.enum(['file', 'dir']),
  files: z.array(CheckpointFileSchema),
  bytes: z.number().int().min(0),
  createdAt: z.string(),
});
const MarkerSchema = z.object({ version: z.literal(1), manifestSha256: z.string(), files: z.number(), bytes: z.number(), completedAt: z.string() });

export type CheckpointFile = z.infer<typeof CheckpointFileSchema>;
export type CheckpointManifest = z.infer<typeof CheckpointManifestSchema>;
/** Bytes sent (or fetched) so far, of the checkpoint's total. */
export type CheckpointProgress = (done: number, total: number) => void;

export type Verification = { verified: true; manifest: CheckpointManifest } | { verified: false; problem: string };

export interface UploadedCheckpoint {
  prefix: string;
  manifest: CheckpointManifest;
  /** The same checkpoint was already complete under the prefix; nothing was sent. */
  alreadyComplete: boolean;
  ms: number;
}

interface LocalFile {
  rel: string;
  abs: string;
  size: number;
  sha256: string;
}

/** A checkpoint's files (a folder is walked; symlinked folders are not followed), hashed. */
async function localFiles(localPath: string): Promise<{ kind: 'file' | 'dir'; files: LocalFile[] }> {
  const st = fs.statSync(localPath);
  const found: { rel: string; abs: string }[] = [];
  if (st.isFile()) {
    found.push({ rel: path.basename(localPath), abs: localPath });
  } else {
    const walk = (dir: string, rel: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const abs = path.join(dir, e.name);
        if (e.isDirectory()) walk(abs, `${rel}${e.name}/`);
        else if (e.isFile() || (e.isSymbolicLink() && fs.statSync(abs, { throwIfNoEntry: false })?.isFile())) found.push({ rel: rel + e.name, abs });
      }
    };
    walk(localPath, '');
  }
  found.sort((a, b) => (a.rel < b.rel ? -1 : 1));
  const files = await pool(found, 4, async (f) => ({ ...f, ...(await sha256File(f.abs)) }));
  return { kind: st.isFile() ? 'file' : 'dir', files };
}

/** Runs `fn` over `items`, `n` at a time, keeping the order of results. */
async function pool<T, R>(items: readonly T[], n: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}

const sameFiles = (a: readonly { path: string; size: number; sha256: string }[], b: readonly { path: string; size: number; sha256: string }[]) =>
  a.length === b.length && a.every((f, i) => f.path === b[i]!.path && f.size === b[i]!.size && f.sha256 === b[i]!.sha256);

/**
 * Uploads a checkpoint under `prefix` and returns its manifest once the marker is written. Re-uploading
 * the same checkpoint to a complete prefix sends nothing; a different one first removes the marker.
 */
export async function uploadCheckpoint(
  store: ObjectStore,
  prefix: string,
  localPath: string,
  opts: {
    onProgress?: CheckpointProgress;
    concurrency?: number;
    signal?: AbortSignal;
    /** Called after the files are sent, before the manifest and the marker are written; a throw leaves the checkpoint incomplete. */
    beforeComplete?: () => Promise<void>;
  } = {},
): Promise<UploadedCheckpoint> {
  const t0 = Date.now();
  const { kind, files } = await localFiles(localPath);
  const total = files.reduce((n, f) => n + f.size, 0);
  const local = files.map((f) => ({ path: f.rel, size: f.size, sha256: f.sha256 }));
  const before = await verifyCheckpoint(store, prefix);
  if (before.verified && before.manifest.name === path.basename(localPath) && sameFiles(before.manifest.files, local)) {
    opts.onProgress?.(total, total);
    return { prefix, manifest: before.manifest, alreadyComplete: true, ms: Date.now() - t0 };
  }
  await store.delete(joinKey(prefix, MARKER));

  const done = new Map<string, number>();
  const report = (rel: string, n: number) => {
    done.set(rel, n);
    let sum = 0;
    for (const v of done.values()) sum += v;
    opts.onProgress?.(sum, total);
  };
  const send = async (f: LocalFile): Promise<CheckpointFile> => {
    opts.signal?.throwIfAborted();
    const etag = await store.put(joinKey(prefix, FILES, f.rel), { file: f.abs }, { sha256: f.sha256, onProgress: (n) => report(f.rel, n) });
    report(f.rel, f.size);
    return { path: f.rel, size: f.size, sha256: f.sha256, etag };
  };
  // Small files in parallel; large ones one at a time, since the store already sends their parts in parallel.
  const big = (f: LocalFile) => f.size > 8 * 2 ** 20;
  const sent = [...(await pool(files.filter((f) => !big(f)), opts.concurrency ?? 4, send)), ...(await pool(files.filter(big), 1, send))];
  sent.sort((a, b) => (a.path < b.path ? -1 : 1));
  opts.signal?.throwIfAborted();
  await opts.beforeComplete?.();

  const manifest: CheckpointManifest = { version: 1, name: path.basename(localPath), kind, files: sent, bytes: total, createdAt: new Date().toISOString() };
  const body = Buffer.from(JSON.stringify(manifest, null, 1));
  await store.put(joinKey(prefix, MANIFEST), body);
  const marker: z.infer<typeof MarkerSchema> = { version: 1, manifestSha256: sha256(body), files: sent.length, bytes: total, completedAt: new Date().toISOString() };
  await store.put(joinKey(prefix, MARKER), Buffer.from(JSON.stringify(marker)));
  // Files of an earlier, different checkpoint under the same prefix.
  const keep = new Set(sent.map((f) => joinKey(prefix, FILES, f.path)));
  for (const o of await store.list(`${joinKey(prefix, FILES)}/`)) if (!keep.has(o.key)) await store.delete(o.key);
  return { prefix, manifest, alreadyComplete: false, ms: Date.now() - t0 };
}

async function readJson<T>(store: ObjectStore, key: string, schema: z.ZodType<T>): Promise<{ value: T; body: Buffer } | string> {
  let body: Buffer;
  try {
    body = (await store.get(key)).body;
  } catch (err) {
    if (err instanceof ObjectNotFound) return 'missing';
    throw err;
  }
  try {
    const r = schema.safeParse(JSON.parse(body.toString('utf8')));
    return r.success ? { value: r.data, body } : 'not a valid Kiln object';
  } catch {
    return 'not valid JSON';
  }
}

/** Whether the checkpoint under `prefix` is complete and unaltered; never throws for a bad checkpoint, only for a broken store. */
export async function verifyCheckpoint(store: ObjectStore, prefix: string): Promise<Verification> {
  const marker = await readJson(store, joinKey(prefix, MARKER), MarkerSchema);
  if (marker === 'missing') return { verified: false, problem: 'no completion marker (the upload did not finish)' };
  if (typeof marker === 'string') return { verified: false, problem: `the completion marker is ${marker}` };
  const manifest = await readJson(store, joinKey(prefix, MANIFEST), CheckpointManifestSchema);
  if (typeof manifest === 'string') return { verified: false, problem: `the manifest is ${manifest}` };
  if (sha256(manifest.body) !== marker.value.manifestSha256) return { verified: false, problem: 'the manifest does not match its completion marker' };
  const problems = await pool(manifest.value.files, 8, async (f) => {
    const o = await store.head(joinKey(prefix, FILES, f.path));
    if (!o) return `${f.path} is missing`;
    if (o.size !== f.size) return `${f.path} is ${o.size} bytes, the manifest says ${f.size}`;
    if (o.sha256 !== undefined && o.sha256 !== f.sha256) return `${f.path} has sha256 ${o.sha256.slice(0, 12)}…, the manifest says ${f.sha256.slice(0, 12)}…`;
    if (o.etag !== f.etag) return `${f.path} was rewritten after the upload (ETag ${o.etag}, the manifest says ${f.etag})`;
    return undefined;
  });
  const bad = problems.filter((p): p is string => p !== undefined);
  if (bad.length) return { verified: false, problem: bad.length > 3 ? `${bad.slice(0, 3).join('; ')}; and ${bad.length - 3} more` : bad.join('; ') };
  return { verified: true, manifest: manifest.value };
}

export interface DownloadedCheckpoint {
  /** The local checkpoint: `<dest>/<name>`, a file or a folder as it was uploaded. */
  path: string;
  manifest: CheckpointManifest;
  /** Every file was already in the cache with the right checksum. */
  reused: boolean;
  downloadedBytes: number;
  ms: number;
}

/**
 * Fetches a verified checkpoint into `dest` (a cache folder for this checkpoint). Files already there
 * with the manifest's size and sha256 are kept; others are fetched and checked; extra files removed.
 */
export async function downloadCheckpoint(store: ObjectStore, prefix: string, dest: string, opts: { onProgress?: CheckpointProgress; concurrency?: number } = {}): Promise<DownloadedCheckpoint> {
  const t0 = Date.now();
  const v = await verifyCheckpoint(store, prefix);
  if (!v.verified) throw new CheckpointNotVerified(store.uri, prefix, v.problem);
  const m = v.manifest;
  const root = path.join(dest, m.name);
  const localOf = (f: CheckpointFile) => (m.kind === 'file' ? root : path.join(root, ...f.path.split('/')));
  const done = new Map<string, number>();
  const report = (p: string, n: number) => {
    done.set(p, n);
    let sum = 0;
    for (const x of done.values()) sum += x;
    opts.onProgress?.(sum, m.bytes);
  };
  let downloadedBytes = 0;
  await pool(m.files, opts.concurrency ?? 4, async (f) => {
    const local = localOf(f);
    const have = fs.statSync(local, { throwIfNoEntry: false });
    if (have?.isFile() && have.size === f.size && (await sha256File(local)).sha256 === f.sha256) return report(f.path, f.size);
    if (have?.isDirectory()) fs.rmSync(local, { recursive: true, force: true });
    const got = await store.download(joinKey(prefix, FILES, f.path), local, { onProgress: (n) => report(f.path, n) });
    if (got.sha256 !== f.sha256 || got.size !== f.size) {
      fs.rmSync(local, { force: true });
      throw new StorageError(`${store.uri}/${prefix}: ${f.path} downloaded with ${got.size} bytes, sha256 ${got.sha256?.slice(0, 12)}…; the manifest says ${f.size} bytes, ${f.sha256.slice(0, 12)}…`, store.uri);
    }
    downloadedBytes += got.size;
  });
  if (m.kind === 'dir') removeExtra(root, new Set(m.files.map((f) => localOf(f))));
  return { path: root, manifest: m, reused: downloadedBytes === 0 && m.files.length > 0, downloadedBytes, ms: Date.now() - t0 };
}

function removeExtra(dir: string, keep: Set<string>): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const abs = path.join(dir, e.name);
    if (e.isDirectory()) {
      removeExtra(abs, keep);
      if (fs.readdirSync(abs).length === 0) fs.rmdirSync(abs);
    } else if (!keep.has(abs)) {
      fs.rmSync(abs, { force: true });
    }
  }
}

/** Removes a checkpoint: the marker first, so a half-deleted checkpoint is never verified. Returns objects deleted. */
export async function deleteCheckpoint(store: ObjectStore, prefix: string): Promise<number> {
  const marker = await store.head(joinKey(prefix, MARKER));
  if (marker) await store.delete(joinKey(prefix, MARKER));
  return (await store.deletePrefix(`${prefix}/`)) + (marker ? 1 : 0);
}

/** Prefixes under `parent` that hold a completion marker (verified or not), oldest key order. */
export async function completedCheckpoints(store: ObjectStore, parent: string): Promise<string[]> {
  const objects = await store.list(parent ? `${parent}/` : '');
  return objects.filter((o) => o.key.endsWith(`/${MARKER}`)).map((o) => o.key.slice(0, -MARKER.length - 1));
}
