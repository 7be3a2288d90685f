/**
 * Writing benchmark results into BENCHMARKS.md: each bench owns one `## ` section and replaces only it.
 */
import * as fs from 'node:fs';

export function writeSection(file: string, heading: string, body: string): void {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    text = '# Benchmarks\n';
  }
  const section = `${heading}\n\n${body.trim()}\n`;
  const start = text.indexOf(`${heading}\n`);
  if (start < 0) {
    text = `${text.trimEnd()}\n\n${section}`;
  } else {
    const next = text.indexOf('\n## ', start + heading.length);
    text = `${text.slice(0, start)}${section}${next < 0 ? '' : text.slice(next)}`;
  }
  fs.writeFileSync(file, text.endsWith('\n') ? text : `${text}\n`);
}

/** A duration for a table cell: "299 ms". */
export const ms = (x: number): string => `${Math.round(x)} ms`;
