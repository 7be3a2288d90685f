/**
 * The `s3` resolver: the version of `s3://bucket/prefix` is the listing of the objects under the
 * prefix (key, size, ETag), so a new or rewritten object is new data and an unchanged prefix is not.
 * Works against AWS S3 and S3-compatible stores (endpoint + forcePathStyle); credentials come from
 * the AWS environment (AWS_ACCESS_KEY_ID, profiles, instance roles).
 */
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type { DatasetVersionConfig } from '../config/schema';
import { DatasetRefused, DatasetUnavailable } from './locate';

type S3Resolver = Extract<DatasetVersionConfig, { resolver: 's3' }>;

export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/i.exec(uri);
  if (!m) throw new DatasetRefused(`dataset ${uri}: not an s3://bucket/prefix URI with a valid bucket name`);
  return { bucket: m[1]!, prefix: m[2] ?? '' };
}

export async function s3Version(uri: string, r: S3Resolver): Promise<{ listing: string; objects: number; bytes: number }> {
  const { bucket, prefix } = parseS3Uri(uri);
  const client = new S3Client({ region: r.region, endpoint: r.endpoint || undefined, forcePathStyle: r.forcePathStyle, maxAttempts: 3 });
  const rows: string[] = [];
  let bytes = 0;
  let token: string | undefined;
  try {
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) {
        rows.push(`${o.Key}\0${o.Size ?? 0}\0${o.ETag ?? ''}`);
        bytes += o.Size ?? 0;
        if (rows.length > r.maxObjects) throw new DatasetRefused(`dataset ${uri} holds more than maxObjects (${r.maxObjects}) objects; raise it or use a command resolver`);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  } catch (err) {
    if (err instanceof DatasetRefused) throw err;
    const e = err as Error & { name?: string };
    const hint = e.name === 'NoSuchBucket' ? ' (the bucket does not exist)' : /credential/i.test(e.message) ? ' (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)' : '';
    throw new DatasetUnavailable(`dataset ${uri}: cannot list s3://${bucket}/${prefix} at ${r.endpoint || 'AWS'}: ${e.name ?? 'Error'}: ${e.message}${hint}`);
  } finally {
    client.destroy();
  }
  if (rows.length === 0) throw new DatasetUnavailable(`dataset ${uri}: no objects under s3://${bucket}/${prefix} yet`);
  rows.sort();
  return { listing: rows.join('\n'), objects: rows.length, bytes };
}
