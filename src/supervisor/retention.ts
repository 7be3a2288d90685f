/**
 * Checkpoint retention: after each verified new checkpoint, keep the latest N, the best K by the
 * configured metric, and every pinned one (registered versions, the pause/resume checkpoint).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CheckpointRef } from '../shared/progress';
import type { Retention } from '../shared/spec';

export function selectKept(all: CheckpointRef[], r: Retention, isPinned: (p: string) => boolean): { keep: CheckpointRef[]; drop: CheckpointRef[] } {
  const byStep = [...all].sort((a, b) => b.step - a.step);
  const keep = new Set<CheckpointRef>(byStep.slice(0, r.keepLatest));
  if (r.keepBest > 0) {
    const scored = all.filter((c) => typeof c.metrics[r.metric] === 'number' && Number.isFinite(c.metrics[r.metric]));
    scored.sort((a, b) => (r.direction === 'min' ? a.metrics[r.metric]! - b.metrics[r.metric]! : b.metrics[r.metric]! - a.metrics[r.metric]!));
    for (const c of scored.slice(0, r.keepBest)) keep.add(c);
  }
  for (const c of all) if (isPinned(c.path)) keep.add(c);
  return { keep: byStep.filter((c) => keep.has(c)).reverse(), drop: all.filter((c) => !keep.has(c)) };
}

export function diskBytes(p: string): number {
  try {
    const st = fs.lstatSync(p);
    if (!st.isDirectory()) return st.size;
    let total = 0;
    for (const n of fs.readdirSync(p)) total += diskBytes(path.join(p, n));
    return total;
  } catch {
    return 0;
  }
}
