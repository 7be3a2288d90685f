/**
 * Where a dataset lives, and whether Kiln may look there. A local path must resolve (after
 * symlinks) inside one of `datasets.roots` and be a regular file or a folder: `file:///etc/shadow`,
 * a FIFO or a device is refused with a message that says how to fix it, before anything reads it.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { DatasetsConfig } from '../config/schema';

/** Thrown when a dataset may not or cannot be used as given: bad input, retrying cannot help. */
export class DatasetRefused extends Error {
  override readonly name = 'DatasetRefused';
}

/** Thrown when a dataset's version could not be found right now (a resolver failed or timed out). */
export class DatasetUnavailable extends Error {
  override readonly name = 'DatasetUnavailable';
}

export type DatasetLocation = { kind: 'local'; path: string } | { kind: 'uri'; scheme: string; uri: string };

const SCHEME_RE = /^([a-z][a-z0-9+.-]*):\/\//i;

/** `file://` and bare paths are local (relative to the config's folder); any other `scheme://` is a URI. */
export function parseDataset(dataset: string, baseDir: string): DatasetLocation {
  if (dataset.includes('\0')) throw new DatasetRefused(`dataset ${JSON.stringify(dataset)} contains a NUL byte`);
  const m = SCHEME_RE.exec(dataset);
  if (m && m[1]!.toLowerCase() !== 'file') return { kind: 'uri', scheme: m[1]!.toLowerCase(), uri: dataset };
  const p = m ? decodeURI(dataset.slice('file://'.length)) : dataset;
  return { kind: 'local', path: path.resolve(baseDir, p) };
}

/** The roots' real paths (missing roots are skipped: they can hold nothing). */
export async function realRoots(ds: DatasetsConfig, baseDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const r of ds.roots) {
    try {
      out.push(await fs.realpath(path.resolve(baseDir, r)));
    } catch {
      // a root that does not exist yet allows nothing
    }
  }
  return out;
}

const inside = (root: string, p: string): boolean => {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
};

/** Why a file type is refused, or null for a regular file or folder. */
export function refusedType(st: import('node:fs').Stats): string | null {
  if (st.isFile() || st.isDirectory()) return null;
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device file';
  return 'not a regular file or folder';
}

/**
 * Resolves a local dataset path to its real path and checks it: it exists, lies inside the roots,
 * and is a regular file or folder.
 */
export async function checkLocal(dataset: string, abs: string, roots: string[], ds: DatasetsConfig, baseDir: string): Promise<string> {
  let real: string;
  try {
    real = await fs.realpath(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DatasetRefused(`dataset ${dataset}: ${code === 'ENOENT' ? 'not found' : `cannot be read (${code})`} at ${abs} (paths resolve against ${baseDir})`);
  }
  if (!roots.some((r) => inside(r, real))) {
    const allowed = ds.roots.map((r) => path.resolve(baseDir, r)).join(', ');
    throw new DatasetRefused(
      `dataset ${dataset} resolves to ${real}, outside the allowed dataset roots (datasets.roots: ${allowed}); move the data under a root or add its folder to datasets.roots in temporal.yaml`,
    );
  }
  const why = refusedType(await fs.stat(real));
  if (why) throw new DatasetRefused(`dataset ${dataset} (${real}) is ${why}; Kiln reads only regular files and folders`);
  return real;
}

/** Locates a dataset and, for a local one, checks it may be read. */
export async function locateDataset(dataset: string, ds: DatasetsConfig, baseDir: string): Promise<DatasetLocation> {
  const loc = parseDataset(dataset, baseDir);
  if (loc.kind === 'uri') return loc;
  return { kind: 'local', path: await checkLocal(dataset, loc.path, await realRoots(ds, baseDir), ds, baseDir) };
}
