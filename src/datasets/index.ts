/**
 * Dataset versions: one fingerprint per data version, found by the dataset's resolver (see
 * DatasetVersionSchema in src/config/schema.ts). One model + one fingerprint trains once, so this is
 * what `retrain.when.dataChanged` compares. Computed once per decision, on the control worker.
 */
import { createHash } from 'node:crypto';
import type { KilnConfig } from '../config/load';
import { resolveCommand } from '../config/load';
import type { DatasetVersionConfig } from '../config/schema';
import { runVersionCommand } from './command';
import { hashContent } from './content';
import { DatasetRefused, locateDataset, realRoots, type DatasetLocation } from './locate';
import { s3Version } from './s3';
import { walkDataset, type DatasetFile } from './walk';

export { DatasetRefused, DatasetUnavailable } from './locate';

export interface DatasetVersion {
  /** 16 hex digits: what the registry records and retrain ids are built from. */
  fingerprint: string;
  resolver: DatasetVersionConfig['resolver'];
  /** One line for status views: `3 files, 1.2 GiB (metadata)`, `version "v42" from dvc`. */
  detail: string;
}

export interface ResolveOptions {
  /** The model whose `datasetVersion` applies, if any. */
  model?: string;
  /** Progress of a long resolve (content hashing): bytes done of total. */
  onProgress?: (done: number, total: number) => void;
}

const digest = (...parts: string[]): string => createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 16);

const gib = (n: number): string => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} B`);

/** The resolver for a dataset: the model's own, else the scheme's, else the local default or `uri`. */
export function resolverFor(config: KilnConfig, loc: DatasetLocation, model?: string): DatasetVersionConfig {
  const own = model ? config.models[model]?.datasetVersion : undefined;
  if (own) return own;
  if (loc.kind === 'local') return { resolver: config.datasets.local };
  return config.datasets.schemes[loc.scheme] ?? { resolver: 'uri' };
}

function fromFiles(resolver: 'metadata' | 'content', files: DatasetFile[], hash: string): DatasetVersion {
  const total = files.reduce((n, f) => n + f.size, 0);
  return { fingerprint: digest(resolver, hash), resolver, detail: `${files.length} file${files.length === 1 ? '' : 's'}, ${gib(total)} (${resolver})` };
}

async function localVersion(config: KilnConfig, dataset: string, real: string, resolver: 'metadata' | 'content', o: ResolveOptions): Promise<DatasetVersion> {
  const ds = config.datasets;
  const deadline = Date.now() + ds.timeout;
  const files = await walkDataset(dataset, real, { roots: await realRoots(ds, config.baseDir), ds, deadline });
  if (resolver === 'metadata') {
    return fromFiles('metadata', files, files.map((f) => `${f.rel}\0${f.size}\0${f.mtimeNs}`).join('\n'));
  }
  const total = files.reduce((n, f) => n + f.size, 0);
  if (total > ds.maxBytes) throw new DatasetRefused(`dataset ${dataset} holds ${gib(total)}, over datasets.maxBytes (${gib(ds.maxBytes)}) for content hashing; raise it or use the metadata resolver`);
  return fromFiles('content', files, await hashContent(dataset, files, Math.max(1, deadline - Date.now()), o.onProgress));
}

/** Finds the dataset's version. DatasetRefused: fix the config or spec; DatasetUnavailable: try again later. */
export async function resolveDatasetVersion(config: KilnConfig, dataset: string, o: ResolveOptions = {}): Promise<DatasetVersion> {
  const loc = await locateDataset(dataset, config.datasets, config.baseDir);
  const r = resolverFor(config, loc, o.model);
  switch (r.resolver) {
    case 'metadata':
    case 'content':
      if (loc.kind !== 'local') throw new DatasetRefused(`dataset ${dataset}: the ${r.resolver} resolver reads local files; this is a ${loc.scheme}:// URI (use uri, s3 or command)`);
      return localVersion(config, dataset, loc.path, r.resolver, o);
    case 'uri':
      return { fingerprint: digest('uri', dataset), resolver: 'uri', detail: 'the URI is the version (uri)' };
    case 'command': {
      const version = await runVersionCommand(dataset, { argv: resolveCommand(config, r.command), cwd: config.baseDir, timeoutMs: r.timeout });
      return { fingerprint: digest('command', version), resolver: 'command', detail: `version "${version.slice(0, 80)}" from ${r.command[0]} (command)` };
    }
    case 's3': {
      if (loc.kind !== 'uri' || loc.scheme !== 's3') throw new DatasetRefused(`dataset ${dataset}: the s3 resolver needs an s3://bucket/prefix URI`);
      const v = await s3Version(dataset, r);
      return { fingerprint: digest('s3', v.listing), resolver: 's3', detail: `${v.objects} object${v.objects === 1 ? '' : 's'}, ${gib(v.bytes)} (s3)` };
    }
  }
}

/** Checks only that the dataset may be used (location, file type), without finding its version. */
export async function checkDataset(config: KilnConfig, dataset: string): Promise<void> {
  await locateDataset(dataset, config.datasets, config.baseDir);
}
