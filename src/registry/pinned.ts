/**
 * Whether a path is pinned by a registered version: pure path logic, shared by the registry and by
 * GPU workers, which learn the pinned paths from the job (they never open the registry).
 */
import * as path from 'node:path';

const URI = /^[a-z][a-z0-9+.-]*:\/\//i;

function normalizePath(p: string): string {
  if (URI.test(p)) return p.replace(/\/+$/, '');
  return path.resolve(p);
}

function contains(parent: string, child: string): boolean {
  if (parent === child) return true;
  const prefix = parent.endsWith('/') || parent.endsWith(path.sep) ? parent : parent + (URI.test(parent) ? '/' : path.sep);
  return child.startsWith(prefix);
}

/** True when deleting `candidate` would delete, or be inside, one of `pinned`. */
export function pinnedBy(pinned: readonly string[], candidate: string): boolean {
  const p = normalizePath(candidate);
  return pinned.some((x) => {
    const q = normalizePath(x);
    return contains(p, q) || contains(q, p);
  });
}

/** The pinned paths that lie inside `dir` or contain it: what retention in that folder must keep. */
export function pinnedUnder(pinned: readonly string[], dir: string): string[] {
  return pinned.filter((x) => pinnedBy([x], dir));
}
