/**
 * Trainer params schemas, declared in temporal.yaml and compiled to zod. Workflow-safe.
 *
 *   params:
 *     lr:     { type: number, gt: 0, max: 10, default: 0.1 }
 *     epochs: { type: integer, min: 1, max: 1000, default: 5 }
 *     optim:  { type: enum, values: [sgd, adam], default: sgd }
 */
import { z } from 'zod';

const base = { description: z.string().optional() };

export const ParamSpecSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('number'),
    ...base,
    min: z.number().optional(),
    max: z.number().optional(),
    gt: z.number().optional(),
    lt: z.number().optional(),
    default: z.number().optional(),
  }),
  z.strictObject({
    type: z.literal('integer'),
    ...base,
    min: z.number().int().optional(),
    max: z.number().int().optional(),
    default: z.number().int().optional(),
  }),
  z.strictObject({
    type: z.literal('string'),
    ...base,
    maxLength: z.number().int().positive().default(1024),
    pattern: z.string().optional(),
    default: z.string().optional(),
  }),
  z.strictObject({ type: z.literal('boolean'), ...base, default: z.boolean().optional() }),
  z.strictObject({
    type: z.literal('enum'),
    ...base,
    values: z.array(z.string()).min(1),
    default: z.string().optional(),
  }),
  z.strictObject({
    type: z.literal('array'),
    ...base,
    items: z.enum(['number', 'integer', 'string']),
    maxItems: z.number().int().positive().default(64),
    default: z.array(z.union([z.number(), z.string()])).optional(),
  }),
]);
export type ParamSpec = z.infer<typeof ParamSpecSchema>;
export type ParamsSchemaDecl = Record<string, ParamSpec>;

function fieldSchema(spec: ParamSpec): z.ZodType {
  switch (spec.type) {
    case 'number': {
      let s = z.number();
      if (spec.min !== undefined) s = s.min(spec.min);
      if (spec.max !== undefined) s = s.max(spec.max);
      if (spec.gt !== undefined) s = s.gt(spec.gt);
      if (spec.lt !== undefined) s = s.lt(spec.lt);
      return s;
    }
    case 'integer': {
      let s = z.number().int();
      if (spec.min !== undefined) s = s.min(spec.min);
      if (spec.max !== undefined) s = s.max(spec.max);
      return s;
    }
    case 'string': {
      let s = z.string().max(spec.maxLength);
      if (spec.pattern) s = s.regex(new RegExp(spec.pattern));
      return s;
    }
    case 'boolean':
      return z.boolean();
    case 'enum':
      return z.enum(spec.values as [string, ...string[]]);
    case 'array': {
      const item = spec.items === 'string' ? z.string().max(1024) : spec.items === 'integer' ? z.number().int() : z.number();
      return z.array(item).max(spec.maxItems);
    }
  }
}

/** A strict zod object for a trainer's params: undeclared params are errors, defaults are filled in. */
export function compileParamsSchema(decl: ParamsSchemaDecl): z.ZodType<Record<string, unknown>> {
  const shape: Record<string, z.ZodType> = {};
  for (const [name, spec] of Object.entries(decl)) {
    const f = fieldSchema(spec);
    shape[name] = spec.default !== undefined ? f.default(spec.default as never) : f.optional();
  }
  return z.strictObject(shape) as unknown as z.ZodType<Record<string, unknown>>;
}

/** One line per zod issue: `params.lr: Too small: expected number to be >0`. */
export function formatIssues(prefix: string, error: z.ZodError): string[] {
  return error.issues.map((i) => {
    const path = [prefix, ...i.path.map(String)].filter(Boolean).join('.');
    return `${path || '(root)'}: ${i.message}`;
  });
}
