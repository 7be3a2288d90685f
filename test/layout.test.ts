/**
 * The house rules of the source tree, checked on the TypeScript sources (no server needed):
 * nothing in src/ reaches up into activities/ or workers/, and there is no import circle among
 * src/, activities/, workflows/ and workers/. The one allowed back-edge is a client's type-only
 * import of a workflow function (`import type { TrainingJob } from '../../workflows/trainingJob'`),
 * which names the workflow's signature and loads nothing. The workflow sandbox fence (what
 * workflows/ and src/shared/ may import) is ESLint's, by folder (eslint.config.mjs).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO } from './helpers/kiln';

const ROOTS = ['src', 'activities', 'workflows', 'workers'];

interface Edge {
  to: string;
  typeOnly: boolean;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

function resolveImport(from: string, spec: string): string | null {
  const base = path.resolve(path.dirname(from), spec);
  for (const c of [`${base}.ts`, path.join(base, 'index.ts')]) if (fs.existsSync(c)) return c;
  return null;
}

/** Static and dynamic relative imports of one file, with whether each is type-only. */
function importsOf(file: string): Edge[] {
  const text = fs.readFileSync(file, 'utf8');
  const edges: Edge[] = [];
  const re = /(?:^|\n)\s*(import|export)\s+(type\s+)?[^'";]*?from\s+'(\.[^']+)'|import\(\s*'(\.[^']+)'\s*\)/g;
  for (const m of text.matchAll(re)) {
    const spec = m[3] ?? m[4]!;
    const to = resolveImport(file, spec);
    if (to) edges.push({ to, typeOnly: Boolean(m[2]) });
  }
  return edges;
}

const rel = (p: string): string => path.relative(REPO, p);
const files = ROOTS.flatMap((r) => sourceFiles(path.join(REPO, r)));
const graph = new Map(files.map((f) => [f, importsOf(f)]));
const top = (p: string): string => rel(p).split(path.sep)[0]!;

test('nothing in src/ imports activities/ or workers/', () => {
  const bad = [...graph].flatMap(([f, edges]) =>
    top(f) === 'src' ? edges.filter((e) => ['activities', 'workers'].includes(top(e.to))).map((e) => `${rel(f)} → ${rel(e.to)}`) : [],
  );
  assert.deepEqual(bad, []);
});

test('no import circle among src/, activities/, workflows/, workers/', () => {
  const allowed = (from: string, e: Edge): boolean => e.typeOnly && top(e.to) === 'workflows' && top(from) === 'src';
  // Tarjan's strongly connected components: any component with more than one file is a circle.
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const circles: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const e of graph.get(v) ?? []) {
      if (!graph.has(e.to) || allowed(v, e)) continue;
      if (!idx.has(e.to)) {
        visit(e.to);
        low.set(v, Math.min(low.get(v)!, low.get(e.to)!));
      } else if (onStack.has(e.to)) low.set(v, Math.min(low.get(v)!, idx.get(e.to)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(rel(w));
      } while (w !== v);
      if (comp.length > 1) circles.push(comp.sort());
    }
  };
  for (const f of files) if (!idx.has(f)) visit(f);
  assert.deepEqual(circles, []);
});

test('the import scanner sees imports (guards the two tests above against matching nothing)', () => {
  const wf = graph.get(path.join(REPO, 'workflows', 'index.ts')) ?? [];
  assert.ok(wf.length >= 2, `workflows/index.ts re-exports its workflows: ${JSON.stringify(wf)}`);
  const typeEdges = [...graph.values()].flat().filter((e) => e.typeOnly);
  assert.ok(typeEdges.length > 0, 'type-only imports are recognised');
});
