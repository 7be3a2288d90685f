/**
 * Lists a local dataset's files with lstat only (never reads them), in a stable order. Symlinks
 * inside are followed only when their target also lies inside the roots; FIFOs, sockets and devices
 * are refused. Bounded by `datasets.maxFiles` and `datasets.timeout`, so a huge or looping tree fails
 * clearly instead of hanging the control worker.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { DatasetsConfig } from '../config/schema';
import { DatasetRefused, refusedType } from './locate';

export interface DatasetFile {
  /** Path relative to the dataset root, with '/' separators ('.' for a single-file dataset). */
  rel: string;
  abs: string;
  size: number;
  mtimeNs: bigint;
}

export interface WalkLimits {
  roots: string[];
  ds: DatasetsConfig;
  deadline: number;
}

const inside = (root: string, p: string): boolean => {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
};

export async function walkDataset(dataset: string, real: string, lim: WalkLimits): Promise<DatasetFile[]> {
  const out: DatasetFile[] = [];
  const seenDirs = new Set<string>();
  const visit = async (abs: string, rel: string): Promise<void> => {
    if (Date.now() > lim.deadline) throw new DatasetRefused(`dataset ${dataset}: listing its files took longer than datasets.timeout (${lim.ds.timeout} ms); raise it or use a command resolver`);
    let st = await fs.lstat(abs, { bigint: true });
    let target = abs;
    if (st.isSymbolicLink()) {
      target = await fs.realpath(abs).catch(() => '');
      if (!target || !lim.roots.some((r) => inside(r, target))) throw new DatasetRefused(`dataset ${dataset}: ${rel} is a symlink that leads outside the allowed dataset roots`);
      st = await fs.stat(target, { bigint: true });
    }
    if (st.isDirectory()) {
      if (seenDirs.has(target)) return;
      seenDirs.add(target);
      const names = (await fs.readdir(abs)).sort();
      for (const n of names) await visit(path.join(abs, n), rel === '.' ? n : `${rel}/${n}`);
      return;
    }
    const why = refusedType(await fs.stat(target));
    if (why) throw new DatasetRefused(`dataset ${dataset}: ${rel} is ${why}; Kiln reads only regular files and folders`);
    if (out.length >= lim.ds.maxFiles) throw new DatasetRefused(`dataset ${dataset} holds more than datasets.maxFiles (${lim.ds.maxFiles}) files; raise it or use a command resolver`);
    out.push({ rel, abs: target, size: Number(st.size), mtimeNs: st.mtimeNs });
  };
  await visit(real, '.');
  return out;
}
