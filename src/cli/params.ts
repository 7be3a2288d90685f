/**
 * `--param k=v` flags: typed by the trainer's declared params, so `--param lr=0.01` is a number and
 * `--param optim=adam` a string. Undeclared names are refused here, before any spec is built.
 */
import * as path from 'node:path';
import type { KilnConfig } from '../config/load';
import { ConfigError, UsageError } from '../shared/errors';
import type { ParamSpec } from '../shared/params';

/** Parses a CLI "k=v" value against the declared type; a value that does not fit stays a string for the schema to refuse. */
export function coerceParam(spec: ParamSpec | undefined, raw: string): unknown {
  if (!spec) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  switch (spec.type) {
    case 'number':
    case 'integer': {
      const n = Number(raw);
      return raw.trim() !== '' && Number.isFinite(n) ? n : raw;
    }
    case 'boolean':
      return raw === 'true' ? true : raw === 'false' ? false : raw;
    case 'array':
      try {
        return JSON.parse(raw);
      } catch {
        return raw.split(',').map((x) => (spec.items === 'string' ? x : Number(x)));
      }
    default:
      return raw;
  }
}

/** `--param k=v` flags, typed by the trainer's declared params. Undeclared names are refused here. */
export function parseParamFlags(config: KilnConfig, model: string, raw: string[]): Record<string, unknown> {
  const m = config.models[model];
  const decl = m ? config.trainers[m.trainer]?.params ?? {} : {};
  const out: Record<string, unknown> = {};
  for (const kv of raw) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`kiln submit: --param takes key=value, got "${kv}" (e.g. --param lr=0.01)`);
    const k = kv.slice(0, eq);
    // Own keys only: `__proto__` or `constructor` must be refused like any undeclared name.
    if (m && !Object.hasOwn(decl, k)) {
      const known = Object.keys(decl);
      throw new ConfigError(`kiln submit: --param ${k}`, [
        `trainer "${m.trainer}" of model ${model} declares no param "${k}" (declared: ${known.join(', ') || 'none'}; declare it under trainers.${m.trainer}.params in ${path.basename(config.file)})`,
      ]);
    }
    out[k] = coerceParam(Object.hasOwn(decl, k) ? decl[k] : undefined, kv.slice(eq + 1));
  }
  return out;
}
