/**
 * A small, strict argv parser: unknown flags are errors, never silently ignored.
 */
import { UsageError } from '../shared/errors';
import { JobIdSchema } from '../shared/spec';

export interface FlagSpec {
  /** 'bool' takes no value; 'string' takes one; 'list' may repeat. */
  type: 'bool' | 'string' | 'list';
  alias?: string;
}

export interface Parsed {
  positional: string[];
  flags: Record<string, string | boolean | string[] | undefined>;
}

export function parseArgs(argv: string[], spec: Record<string, FlagSpec>, verb: string): Parsed {
  const flags: Parsed['flags'] = {};
  const positional: string[] = [];
  const byAlias = new Map<string, string>();
  for (const [k, s] of Object.entries(spec)) if (s.alias) byAlias.set(s.alias, k);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('-') && a !== '-') {
      let key = a.replace(/^--?/, '');
      let value: string | undefined;
      const eq = key.indexOf('=');
      if (eq >= 0) {
        value = key.slice(eq + 1);
        key = key.slice(0, eq);
      }
      key = byAlias.get(key) ?? key;
      const s = spec[key];
      if (!s) {
        const known = Object.keys(spec).map((k) => `--${k}`).join(', ');
        throw new UsageError(`kiln ${verb}: unknown option ${a}${known ? ` (known: ${known})` : ''}; see kiln ${verb} --help`);
      }
      if (s.type === 'bool') {
        if (value !== undefined) throw new UsageError(`kiln ${verb}: --${key} takes no value`);
        flags[key] = true;
        continue;
      }
      if (value === undefined) {
        value = argv[++i];
        if (value === undefined) throw new UsageError(`kiln ${verb}: --${key} needs a value`);
      }
      if (s.type === 'list') flags[key] = [...((flags[key] as string[] | undefined) ?? []), value];
      else flags[key] = value;
      continue;
    }
    positional.push(a);
  }
  return { positional, flags };
}

export function str(p: Parsed, k: string): string | undefined {
  const v = p.flags[k];
  return typeof v === 'string' ? v : undefined;
}

export function bool(p: Parsed, k: string): boolean {
  return p.flags[k] === true;
}

export function list(p: Parsed, k: string): string[] {
  const v = p.flags[k];
  return Array.isArray(v) ? v : [];
}

export function int(p: Parsed, k: string, verb: string): number | undefined {
  const v = str(p, k);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`kiln ${verb}: --${k} must be a non-negative integer, got "${v}"`);
  return Number(v);
}

/** The one job id a job verb takes, checked like a workflow id Kiln would start. */
export function jobIdArg(p: Parsed, verb: string): string {
  const id = p.positional[0];
  if (!id) throw new UsageError(`kiln ${verb}: which job? e.g. kiln ${verb} train-spirals-3k9x2a (see kiln list)`);
  const r = JobIdSchema.safeParse(id);
  if (!r.success) throw new UsageError(`kiln ${verb}: ${r.error.issues[0]!.message} (got ${JSON.stringify(id)})`);
  if (p.positional.length > 1) throw new UsageError(`kiln ${verb}: one job at a time, got ${p.positional.length} (${p.positional.join(' ')})`);
  return id;
}
