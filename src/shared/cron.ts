/**
 * Validates retrain schedule expressions before they reach the server, so a bad cron fails at
 * config load instead of at fire time. Workflow-safe.
 *
 * Accepted: 5-field cron (`m h dom mon dow`, with `*`, lists, ranges, steps, month/day names),
 * the macros @hourly @daily @midnight @weekly @monthly @yearly @annually, and `@every <duration>`.
 */
import { parseDuration } from './duration';

const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'] },
  { name: 'day of week', min: 0, max: 7, names: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] },
] as const;

const MACROS = new Set(['@hourly', '@daily', '@midnight', '@weekly', '@monthly', '@yearly', '@annually']);

export type ParsedSchedule = { kind: 'cron'; expr: string } | { kind: 'every'; everyMs: number };

function valueOf(token: string, f: (typeof FIELDS)[number]): number | undefined {
  if ('names' in f) {
    const i = (f.names as readonly string[]).indexOf(token.toLowerCase());
    if (i >= 0) return i + (f.name === 'month' ? 1 : 0);
  }
  return /^\d+$/.test(token) ? Number(token) : undefined;
}

function checkField(text: string, f: (typeof FIELDS)[number]): string | undefined {
  for (const part of text.split(',')) {
    const [rangePart, stepPart, extra] = part.split('/');
    if (extra !== undefined) return `"${part}" has more than one '/'`;
    if (stepPart !== undefined && !/^[1-9]\d*$/.test(stepPart)) return `step "${stepPart}" must be a positive integer`;
    if (rangePart === '*') continue;
    const bounds = rangePart!.split('-');
    if (bounds.length > 2) return `"${rangePart}" is not a value or a range`;
    const nums = bounds.map((b) => valueOf(b, f));
    for (let i = 0; i < nums.length; i++) {
      const n = nums[i];
      if (n === undefined) return `"${bounds[i]}" is not a number`;
      if (n < f.min || n > f.max) return `${n} is out of range (${f.name} must be ${f.min}-${f.max})`;
    }
    if (nums.length === 2 && nums[0]! > nums[1]!) return `range "${rangePart}" goes backwards`;
  }
  return undefined;
}

/** Returns the parsed schedule, or an error message saying what is wrong. */
export function parseSchedule(expr: string): ParsedSchedule | { error: string } {
  const e = expr.trim();
  if (e.startsWith('@every')) {
    const d = parseDuration(e.slice('@every'.length).trim());
    if (d === undefined || d < 1000) return { error: `"${expr}" needs a duration of at least 1s, e.g. "@every 6h"` };
    return { kind: 'every', everyMs: d };
  }
  if (e.startsWith('@')) {
    if (MACROS.has(e)) return { kind: 'cron', expr: e };
    return { error: `"${expr}" is not a known macro (use ${[...MACROS].join(', ')} or "@every <duration>")` };
  }
  const parts = e.split(/\s+/);
  if (parts.length !== 5) {
    return { error: `"${expr}" is not a valid cron expression (expected 5 fields "minute hour day-of-month month day-of-week", got ${parts.length})` };
  }
  for (let i = 0; i < 5; i++) {
    const problem = checkField(parts[i]!, FIELDS[i]!);
    if (problem) return { error: `"${expr}" is not a valid cron expression (${FIELDS[i]!.name}: ${problem})` };
  }
  return { kind: 'cron', expr: parts.join(' ') };
}
