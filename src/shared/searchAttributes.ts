import { defineSearchAttributeKey, SearchAttributeType, type SearchAttributePair, type TypedSearchAttributes } from '@temporalio/common';

/** Kiln's custom search attributes. All Keyword, so they filter exactly in the UI and `temporal workflow list`. */
export const KilnModel = defineSearchAttributeKey('KilnModel', SearchAttributeType.KEYWORD);
export const KilnPhase = defineSearchAttributeKey('KilnPhase', SearchAttributeType.KEYWORD);
export const KilnTrigger = defineSearchAttributeKey('KilnTrigger', SearchAttributeType.KEYWORD);

export const KILN_SEARCH_ATTRIBUTES = [KilnModel, KilnPhase, KilnTrigger] as const;

/** The typed attributes of a job, schedule or retrain run: the one place they are written. */
export function kilnSearchAttributes(a: { model?: string; phase?: string; trigger?: string }): SearchAttributePair[] {
  const pairs: SearchAttributePair[] = [];
  if (a.model !== undefined) pairs.push({ key: KilnModel, value: a.model });
  if (a.phase !== undefined) pairs.push({ key: KilnPhase, value: a.phase });
  if (a.trigger !== undefined) pairs.push({ key: KilnTrigger, value: a.trigger });
  return pairs;
}

/** Kiln's attributes as read back from a describe or a visibility listing (missing ones are null). */
export function readKilnSearchAttributes(t: TypedSearchAttributes): { model: string | null; phase: string | null; trigger: string | null } {
  return { model: t.get(KilnModel) ?? null, phase: t.get(KilnPhase) ?? null, trigger: t.get(KilnTrigger) ?? null };
}
