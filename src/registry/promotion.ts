// Pure and dependency-free: imported from workflow code, which runs in
// Temporal's deterministic sandbox (no Node modules, no clock, no I/O).
import type { PromotionPolicyConfig } from '../shared/spec';

/**
 * The policy as the promotion decision needs it: the prepared job's (src/shared/spec.ts), with the
 * improvement threshold optional (default 0, absolute: any strict improvement) and no approval timeout.
 */
export type PromotionPolicy = Pick<PromotionPolicyConfig, 'metric' | 'direction' | 'mode'> & Partial<Pick<PromotionPolicyConfig, 'minImprovement' | 'improvementKind'>>;

export interface PromotionCandidate {
  metrics: Record<string, number | null | undefined>;
  complete: boolean;
  missingMetrics: string[];
}

export interface PromotionBaseline {
  version: number;
  metrics: Record<string, number | null | undefined>;
}

export interface PromotionVerdict {
  /** The candidate beats production under the policy (or there is no production). */
  promote: boolean;
  /** promote && policy.mode === 'approval': wait for approval before calling registry.promote. */
  requiresApproval: boolean;
  reason: string;
}

function isPresent(v: number | null | undefined): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Required metrics that are absent, null or non-finite, in `required` order. */
export function missingRequired(
  required: readonly string[],
  metrics: Record<string, number | null | undefined>,
): string[] {
  const out: string[] = [];
  for (const name of required) {
    const has = Object.prototype.hasOwnProperty.call(metrics, name) && isPresent(metrics[name]);
    if (!has && !out.includes(name)) out.push(name);
  }
  return out;
}

/** Up to 4 significant digits, no trailing zeros: 0.0812345 → "0.08123". */
export function formatMetric(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  return String(Number(x.toPrecision(4)));
}

export function evaluatePromotion(
  policy: PromotionPolicy,
  candidate: PromotionCandidate,
  production: PromotionBaseline | null,
): PromotionVerdict {
  const minImprovement = policy.minImprovement ?? 0;
  const kind = policy.improvementKind ?? 'absolute';
  if (!Number.isFinite(minImprovement) || minImprovement < 0) {
    throw new RangeError(`promotion policy: minImprovement must be a finite number >= 0, got ${minImprovement}`);
  }
  const { metric } = policy;

  const keep = (reason: string): PromotionVerdict => ({ promote: false, requiresApproval: false, reason });
  const go = (why: string): PromotionVerdict =>
    policy.mode === 'approval'
      ? { promote: true, requiresApproval: true, reason: `eligible for promotion (approval required): ${why}` }
      : { promote: true, requiresApproval: false, reason: `promoted: ${why}` };

  if (!candidate.complete || candidate.missingMetrics.length > 0) {
    const missing = candidate.missingMetrics.length > 0 ? `, missing required metrics ${candidate.missingMetrics.join(', ')}` : '';
    return keep(`not promotable: incomplete${missing}`);
  }
  const cand = candidate.metrics[metric];
  if (!isPresent(cand)) {
    return keep(`not promotable: missing policy metric ${metric}`);
  }
  if (production === null) {
    return go('first version of the model (no production yet)');
  }
  const prod = production.metrics[metric];
  const tag = `(production v${production.version})`;
  if (!isPresent(prod)) {
    // Comparing against nothing must not silently replace production; a human can manual-promote.
    return keep(`kept candidate: production v${production.version} has no ${metric} to compare against`);
  }

  const delta = kind === 'relative' ? Math.abs(prod) * minImprovement : minImprovement;
  const threshold = policy.direction === 'min' ? prod - delta : prod + delta;
  const op = policy.direction === 'min' ? '<' : '>';
  const sign = policy.direction === 'min' ? '-' : '+';
  let rhs = formatMetric(prod);
  if (minImprovement > 0) {
    rhs +=
      kind === 'relative'
        ? ` ${sign} ${formatMetric(minImprovement * 100)}% (${formatMetric(threshold)})`
        : ` ${sign} ${formatMetric(minImprovement)}`;
  }
  const better = policy.direction === 'min' ? cand < threshold : cand > threshold;
  return better
    ? go(`${metric} ${formatMetric(cand)} ${op} ${rhs} ${tag}`)
    : keep(`kept candidate: ${metric} ${formatMetric(cand)} is not ${op} ${rhs} ${tag}`);
}
