/**
 * Names that end up in workflow ids, schedule ids and paths under artifacts.root.
 * Workflow-safe: no Node imports.
 */

/** Model, trainer and pool names: a letter or digit first, then letters, digits, '.', '_' or '-'. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const NAME_HINT = "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit";

/** Job ids (workflow ids) also become directory names, so the same alphabet, a bit longer. */
export const JOB_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
export const JOB_ID_HINT = "use 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit";

const SECTION = { model: 'models', trainer: 'trainers', pool: 'workers.pools' } as const;

/** The one wording of "that name is not in the config": what is defined, and where to add it. */
export function unknownName(kind: keyof typeof SECTION, name: string, defined: string[], file?: string): string {
  return `unknown ${kind} "${name}" (defined ${kind}s: ${defined.join(', ') || 'none'}; add it under ${SECTION[kind]}:${file ? ` in ${file}` : ''})`;
}
