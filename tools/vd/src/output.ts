import type { Context } from './context.js';

/** `--json`: exactly one JSON document on stdout, nothing else there. */
export function printJson(ctx: Context, doc: unknown): void {
  if (ctx.jsonPrinted) throw new Error('internal: a second JSON document was about to be printed');
  ctx.jsonPrinted = true;
  ctx.io.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
}

export function printLines(ctx: Context, ...lines: string[]): void {
  ctx.io.stdout.write(lines.map((l) => `${l}\n`).join(''));
}

/**
 * Left-aligned columns separated by two spaces; `right` lists column indexes to right-align
 * (numbers). The header row, when given, is printed first.
 */
export function formatTable(
  rows: readonly (readonly string[])[],
  opts: { header?: readonly string[]; right?: readonly number[] } = {},
): string[] {
  const all = opts.header ? [opts.header, ...rows] : rows;
  const widths: number[] = [];
  for (const row of all) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length);
  }
  const right = new Set(opts.right ?? []);
  return all.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 && !right.has(i) ? cell : right.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

/** `key: value` lines with the values aligned. */
export function formatFields(fields: readonly (readonly [string, string])[]): string[] {
  const width = Math.max(0, ...fields.map(([k]) => k.length + 1));
  return fields.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`);
}
