/**
 * The `s3` store: AWS S3 or an S3-compatible server (MinIO, Ceph RGW, R2, GCS interoperability) through
 * the AWS SDK v3. Files over `partSize` go up as multipart uploads (`@aws-sdk/lib-storage`) with
 * `concurrency` parts in flight; create-only and compare-and-swap puts use If-None-Match / If-Match.
 * Errors say which endpoint failed and how to fix it, never the credentials.
 */
import * as fs from 'node:fs';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { StorageConfig } from '../config/schema';
import { ObjectNotFound, PreconditionFailed, StorageError, StorageUnavailable } from './errors';
import { sha256, writeStreamAtomic } from './hash';
import { probeStore } from './probe';
import { checkKey, joinKey, type Body, type ListedObject, type ObjectInfo, type ObjectStore, type PutOptions, type ProbeResult } from './types';

export type S3StorageConfig = Extract<StorageConfig, { kind: 's3' }>;

const SHA_META = 'kiln-sha256';
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED']);
const CREDENTIAL_NAMES = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'InvalidToken', 'TokenRefreshRequired', 'CredentialsProviderError', 'InvalidClientTokenId']);

interface SdkError extends Error {
  Code?: string;
  code?: string;
  errors?: { code?: string }[];
  $metadata?: { httpStatusCode?: number };
}

const b64ToHex = (b: string) => Buffer.from(b, 'base64').toString('hex');
const hexToB64 = (h: string) => Buffer.from(h, 'hex').toString('base64');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class S3Store implements ObjectStore {
  readonly uri: string;
  private readonly client: S3Client;
  /** Where requests go, for messages. */
  private readonly where: string;

  constructor(
    private readonly cfg: S3StorageConfig,
    private readonly tuning: { listPageSize?: number; maxAttempts?: number; connectTimeoutMs?: number } = {},
  ) {
    this.uri = `s3://${joinKey(cfg.bucket, cfg.prefix)}`;
    this.where = cfg.endpoint ? `endpoint ${cfg.endpoint}` : `AWS S3 (region ${cfg.region})`;
    this.client = new S3Client({
      region: cfg.region,
      endpoint: cfg.endpoint,
      forcePathStyle: cfg.forcePathStyle,
      credentials: cfg.accessKeyId && cfg.secretAccessKey ? { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey, sessionToken: cfg.sessionToken } : undefined,
      maxAttempts: tuning.maxAttempts ?? 3,
      // The SDK's default CRC32 checksums break many S3-compatible stores; Kiln sends SHA-256 itself.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: tuning.connectTimeoutMs ?? 5000, requestTimeout: 120_000 },
    });
  }

  private key(key: string): string {
    return joinKey(this.cfg.prefix, checkKey(this.uri, key));
  }

  async put(key: string, body: Body, opts: PutOptions = {}): Promise<string> {
    const Key = this.key(key);
    const cond = { IfNoneMatch: opts.ifNoneMatch, IfMatch: opts.ifMatch };
    try {
      const size = Buffer.isBuffer(body) ? body.length : (await fs.promises.stat(body.file)).size;
      if (size <= this.cfg.partSize) {
        // A file still being appended to (a log) goes up as it was at stat time.
        const data = Buffer.isBuffer(body) ? body : (await fs.promises.readFile(body.file)).subarray(0, size);
        const sha = opts.sha256 ?? sha256(data);
        const cmd = new PutObjectCommand({ Bucket: this.cfg.bucket, Key, Body: data, ContentLength: data.length, ChecksumAlgorithm: 'SHA256', ChecksumSHA256: hexToB64(sha), Metadata: { [SHA_META]: sha }, ...cond });
        // A 409 means a concurrent conditional write to the key was in flight: retry, and lose with a 412 if it won.
        for (let i = 0; ; i++) {
          try {
            const r = await this.client.send(cmd);
            opts.onProgress?.(size, size);
            return r.ETag ?? '';
          } catch (err) {
            if ((err as SdkError).$metadata?.httpStatusCode !== 409 || i >= 3) throw err;
            await sleep(50 * (i + 1));
          }
        }
      }
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.cfg.bucket, Key, Body: Buffer.isBuffer(body) ? body : fs.createReadStream(body.file, { end: size - 1 }), ContentLength: size, Metadata: opts.sha256 ? { [SHA_META]: opts.sha256 } : undefined, ...cond },
        partSize: this.cfg.partSize,
        queueSize: this.cfg.concurrency,
        leavePartsOnError: false,
      });
      upload.on('httpUploadProgress', (p) => opts.onProgress?.(p.loaded ?? 0, size));
      const r = await upload.done();
      return r.ETag ?? '';
    } catch (err) {
      const e = err as SdkError;
      const status = e.$metadata?.httpStatusCode;
      const conditional = opts.ifNoneMatch !== undefined || opts.ifMatch !== undefined;
      if (conditional && (status === 412 || status === 409 || (opts.ifMatch !== undefined && status === 404 && e.name !== 'NoSuchBucket'))) {
        throw new PreconditionFailed(this.uri, key, opts.ifNoneMatch ? 'if-none-match' : 'if-match');
      }
      throw this.fail(err, `put ${key}`);
    }
  }

  async get(key: string): Promise<{ body: Buffer; etag: string }> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(key) }));
      return { body: Buffer.from(await r.Body!.transformToByteArray()), etag: r.ETag ?? '' };
    } catch (err) {
      if (isMissingKey(err)) throw new ObjectNotFound(this.uri, key);
      throw this.fail(err, `get ${key}`);
    }
  }

  async download(key: string, localPath: string, opts: { onProgress?: (done: number, total: number) => void } = {}): Promise<ObjectInfo> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(key) }));
      const total = r.ContentLength ?? 0;
      const d = await writeStreamAtomic(r.Body as Readable, localPath, (done) => opts.onProgress?.(done, total));
      if (r.ContentLength !== undefined && d.size !== r.ContentLength) {
        throw new StorageError(`${this.uri}/${key}: download ended after ${d.size} of ${r.ContentLength} bytes`, this.uri);
      }
      return { key, size: d.size, etag: r.ETag ?? '', sha256: d.sha256 };
    } catch (err) {
      if (err instanceof StorageError) throw err;
      if (isMissingKey(err)) throw new ObjectNotFound(this.uri, key);
      throw this.fail(err, `download ${key}`);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(key), ChecksumMode: 'ENABLED' }));
      // A multipart object's checksum is of its parts ("…-N"), not of the content.
      const full = r.ChecksumSHA256 && !r.ChecksumSHA256.includes('-') && r.ChecksumType !== 'COMPOSITE' ? b64ToHex(r.ChecksumSHA256) : undefined;
      return { key, size: r.ContentLength ?? 0, etag: r.ETag ?? '', sha256: full ?? r.Metadata?.[SHA_META] };
    } catch (err) {
      if (isMissingKey(err)) return undefined;
      throw this.fail(err, `head ${key}`);
    }
  }

  async list(prefix: string): Promise<ListedObject[]> {
    const base = this.cfg.prefix ? `${this.cfg.prefix}/` : '';
    const out: ListedObject[] = [];
    let token: string | undefined;
    try {
      do {
        const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: base + prefix, ContinuationToken: token, MaxKeys: this.tuning.listPageSize }));
        for (const o of page.Contents ?? []) if (o.Key?.startsWith(base)) out.push({ key: o.Key.slice(base.length), size: o.Size ?? 0 });
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw this.fail(err, `list ${prefix || '(all)'}`);
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(key) }));
    } catch (err) {
      if (!isMissingKey(err)) throw this.fail(err, `delete ${key}`);
    }
  }

  /** One DeleteObject per key, `concurrency` at a time: multi-object delete is missing on some S3-compatible stores. */
  async deletePrefix(prefix: string): Promise<number> {
    const keys = (await this.list(prefix)).map((o) => o.key);
    let next = 0;
    const worker = async () => {
      while (next < keys.length) await this.delete(keys[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(this.cfg.concurrency, keys.length) }, worker));
    return keys.length;
  }

  probe(): Promise<ProbeResult> {
    return probeStore(this);
  }

  close(): void {
    this.client.destroy();
  }

  /** The one place SDK errors become Kiln's: unreachable, credentials, bucket, permissions, or other. */
  private fail(err: unknown, op: string): StorageError {
    const e = err as SdkError;
    const name = e.Code ?? e.name ?? 'Error';
    const status = e.$metadata?.httpStatusCode;
    const netCode = [e.code, ...(e.errors ?? []).map((x) => x.code)].find((c) => c && NETWORK_CODES.has(c));
    if (netCode || (!status && /TimeoutError|RequestTimeout/.test(name))) {
      return new StorageUnavailable(
        `${this.uri}: cannot reach the storage ${this.where} (${netCode ?? name}) during ${op}: check storage.endpoint in temporal.yaml, that the server is running, and that this host can reach it`,
        this.uri,
        'unreachable',
      );
    }
    if (CREDENTIAL_NAMES.has(name) || /could not load credentials/i.test(e.message) || (status === 403 && name !== 'AccessDenied')) {
      const hint = this.cfg.accessKeyId
        ? 'check storage.accessKeyId, storage.secretAccessKey (and sessionToken) in temporal.yaml, or the environment variables they name'
        : 'storage.accessKeyId is not set, so the AWS default chain was used: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role, or storage.accessKeyId/secretAccessKey';
      const what = status ? `the credentials were refused by the storage ${this.where} (${name}, HTTP ${status})` : `no credentials for the storage ${this.where} were found (${name})`;
      return new StorageUnavailable(`${this.uri}: ${what} during ${op}: ${hint}`, this.uri, 'credentials');
    }
    if (name === 'NoSuchBucket' || name === 'PermanentRedirect' || status === 301) {
      const fix =
        name === 'NoSuchBucket'
          ? `create it (aws s3 mb s3://${this.cfg.bucket}${this.cfg.endpoint ? ` --endpoint-url ${this.cfg.endpoint}` : ''}) or fix storage.bucket`
          : 'it is in another region: set storage.region';
      return new StorageUnavailable(`${this.uri}: the bucket ${this.cfg.bucket} ${name === 'NoSuchBucket' ? 'does not exist' : 'is not here'} at the storage ${this.where}: ${fix}`, this.uri, 'bucket');
    }
    if (name === 'AccessDenied') {
      return new StorageUnavailable(
        `${this.uri}: access denied by the storage ${this.where} during ${op}: grant these credentials s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on ${this.cfg.bucket}`,
        this.uri,
        'denied',
      );
    }
    return new StorageError(`${this.uri}: ${op} failed at the storage ${this.where}: ${name}${status ? ` (HTTP ${status})` : ''}: ${e.message}`, this.uri);
  }
}

function isMissingKey(err: unknown): boolean {
  const e = err as SdkError;
  return e.name === 'NoSuchKey' || e.name === 'NotFound' || (e.$metadata?.httpStatusCode === 404 && e.name !== 'NoSuchBucket');
}
