/**
 * The command blocks of README.md and docs/*.md, for test/docs.test.ts and test/docs-run.test.ts.
 *
 * A block is fenced ```sh (or bash/shell). Its info string says how it is tested:
 * - `sh operations-test id=X` (docs/operations.md only): run by test/docs.test.ts with JOB naming a real job;
 * - `sh docs-test id=X [exit=N]`: run as written, in the order of its doc, by test/docs-run.test.ts against
 *   a `kiln dev` that test starts in the background; it must exit 0 (or the documented N);
 * - anything else must be in NOT_RUNNABLE, with the reason.
 * A ```text output block right after a docs-test block is what the doc says it prints: every line
 * (`…` matches anything) must be in the block's output. A ```yaml docs-config block is a model the doc
 * tells the reader to add under `models:` in temporal.yaml; the kiln dev of docs-run.test.ts has it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO } from './kiln';

export interface ShellBlock {
  /** `<file>: <first line without its comment>` */
  key: string;
  file: string;
  info: string;
  script: string;
  where: string;
  /** docs-test: the id, the expected exit code and the lines the doc shows it prints. */
  id?: string;
  exit: number;
  output: string[];
}

export const DOC_FILES = (): string[] => ['README.md', ...fs.readdirSync(path.join(REPO, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

export interface Fence {
  lang: string;
  info: string;
  body: string[];
  line: number;
}

/** Every fenced block of a doc (path relative to the repo): its language, the rest of its info string, body and line. */
export function fences(file: string): Fence[] {
  const lines = fs.readFileSync(path.join(REPO, file), 'utf8').split('\n');
  const out: Fence[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)(.*)$/.exec(lines[i]!);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !lines[i]!.startsWith('```'); i++) body.push(lines[i]!);
    out.push({ lang: open[1]!, info: open[2]!.trim(), body, line: start + 1 });
  }
  return out;
}

/** Every shell block in README.md and docs/*.md, in doc order. */
export function shellBlocks(): ShellBlock[] {
  const out: ShellBlock[] = [];
  for (const file of DOC_FILES()) {
    const all = fences(file);
    all.forEach((f, i) => {
      if (!/^(sh|bash|shell)$/.test(f.lang)) return;
      const m = /^docs-test id=([\w-]+)(?: exit=(\d+))?$/.exec(f.info);
      const next = all[i + 1];
      const output = m && next && next.lang === 'text' && next.info === 'output' ? next.body.filter((l) => l.trim()) : [];
      out.push({ key: `${file}: ${f.body[0]?.split('#')[0]!.trim()}`, file, info: f.info, script: f.body.join('\n'), where: `${file}:${f.line}`, id: m?.[1], exit: Number(m?.[2] ?? 0), output });
    });
  }
  return out;
}

/** Unfenced-language blocks that are commands (each line a `temporal`/`kiln` command): they must be ```sh. */
export function unlabelledCommandBlocks(): string[] {
  const out: string[] = [];
  for (const file of DOC_FILES()) {
    for (const f of fences(file)) {
      const lines = f.body.filter((l) => l.trim() && !l.startsWith('  '));
      if (f.lang || !lines.length) continue;
      if (lines.every((l) => /^(npx kiln|kiln|temporal) [a-z]/.test(l) && !/^(npx )?kiln [\w ]+:/.test(l))) out.push(`${file}:${f.line}: ${lines[0]}`);
    }
  }
  return out;
}

/** The models a doc tells the reader to add to temporal.yaml (```yaml docs-config), as lines under `models:`. */
export function docsConfigModels(): string[] {
  const out: string[] = [];
  for (const file of DOC_FILES()) {
    for (const f of fences(file)) {
      if (f.lang !== 'yaml' || f.info !== 'docs-config') continue;
      if (f.body[0] !== 'models:') throw new Error(`${file}:${f.line}: a docs-config block starts with models:`);
      out.push(...f.body.slice(1));
    }
  }
  return out;
}

/** Does `out` have a line the doc shows (`…` matches anything)? */
export function showsLine(out: string, docLine: string): boolean {
  const re = new RegExp(docLine.trim().split('…').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*'));
  return out.split('\n').some((l) => re.test(l));
}

/**
 * Shell blocks not run by any test, each with the reason: they need what a test machine has not
 * (a production cluster, systemd, /etc of an installed host), or they are synopses, not commands.
 */
export const NOT_RUNNABLE: Record<string, string> = {
  'README.md: npm install && npm start': 'installs packages, then runs the whole stack or the whole suite: what .ci/run does on a clean checkout',
  'docs/deploy.md: TEMPORAL_API_KEY=...': 'secrets for a production cluster (Temporal Cloud, S3, PostgreSQL): there is none here',
  'docs/deploy.md: temporal operator namespace create --namespace kiln --address temporal.internal:7233': 'needs the production cluster temporal.internal:7233; the dev server has its namespace',
  'docs/deploy.md: aws s3 mb s3://acme-kiln --region us-east-1': 'creates a real AWS bucket; S3 is tested against moto in test/storage.test.ts',
  'docs/deploy.md: sudo -u postgres psql -c "CREATE ROLE kiln LOGIN PASSWORD \'…\'"': 'creates a role on a production PostgreSQL; the registry tests run their own cluster',
  'docs/deploy.md: sudo useradd --system --home /var/lib/kiln --create-home kiln': 'adds a system user and /opt, /etc folders on a host: not in a test',
  "docs/deploy.md: KILN_CONFIG=/etc/kiln/temporal.yaml sh -c 'set -a; . /etc/kiln/secrets.env; exec node /opt/kiln/bin/kiln doctor'": 'reads /etc/kiln of an installed host; kiln doctor itself is run by the setup block and test/cli.test.ts',
  'docs/deploy.md: sudo systemctl daemon-reload': 'systemd units on a host: no systemd here',
  'docs/deploy.md: export KILN_CONFIG=/etc/kiln/temporal.yaml': 'an installed host with /etc/kiln and the production cluster; the same verbs run in the README tour (test/docs-run.test.ts)',
  'docs/operations.md: JOB=train-spirals-3k9x2a': 'sets the placeholder; the operations-test blocks get JOB from test/docs.test.ts, naming a real job',
  'docs/operations.md: npx kiln worker gpu --pool gpu 2>&1 | jq -c \'select(.jobId == "train-spirals-3k9x2a")\'': 'a worker that runs until stopped, piped to jq for a placeholder job; workers run in every end-to-end test',
  'docs/registry.md: npx kiln models list [--model M] [--stage candidate|production|archived] [--json]': 'a synopsis with [options] and <placeholders>, not a command; each verb is run by test/registry.test.ts and test/cli.test.ts',
  'docs/schedules.md: kiln schedules sync [--dry-run] [--json]': 'a synopsis with [options] and <placeholders>, not a command; each verb is run by test/schedules.test.ts',
};
