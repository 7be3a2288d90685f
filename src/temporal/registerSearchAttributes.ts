/**
 * Registers Kiln's search attributes on a server that was not started with them (an existing
 * cluster, or a dev server started by someone else). ALREADY_EXISTS is fine.
 */
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { KILN_SEARCH_ATTRIBUTES } from '../shared/searchAttributes';

export async function ensureSearchAttributes(client: Client, namespace: string): Promise<string[]> {
  const op = client.connection.operatorService;
  const existing = await op.listSearchAttributes({ namespace });
  const have = new Set(Object.keys(existing.customAttributes ?? {}));
  const missing = KILN_SEARCH_ATTRIBUTES.filter((k) => !have.has(k.name));
  if (missing.length === 0) return [];
  const searchAttributes: Record<string, temporal.api.enums.v1.IndexedValueType> = {};
  for (const k of missing) searchAttributes[k.name] = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
  try {
    await op.addSearchAttributes({ namespace, searchAttributes });
  } catch (err) {
    if (!/already exists/i.test(String((err as Error).message))) throw err;
  }
  return missing.map((k) => k.name);
}
