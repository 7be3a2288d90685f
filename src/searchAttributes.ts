import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Kiln's custom search attributes. All Keyword, so they filter exactly in the UI and `temporal workflow list`. */
export const KilnModel = defineSearchAttributeKey('KilnModel', SearchAttributeType.KEYWORD);
export const KilnPhase = defineSearchAttributeKey('KilnPhase', SearchAttributeType.KEYWORD);
export const KilnTrigger = defineSearchAttributeKey('KilnTrigger', SearchAttributeType.KEYWORD);

export const KILN_SEARCH_ATTRIBUTES = [KilnModel, KilnPhase, KilnTrigger] as const;
