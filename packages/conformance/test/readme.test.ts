import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { caseSpecs, requirementRules } from '../src/index.js';

/**
 * The README's tables are rendered from the case table, so they cannot drift from the code. Cells
 * are compared trimmed, so a Markdown formatter may pad the columns.
 */
function cells(table: string): string[][] {
  return table
    .split('\n')
    .filter((line) => line.startsWith('|') && !/^\|[\s|:-]+\|$/.test(line))
    .map((line) =>
      line
        .slice(1, -1)
        .split('|')
        .map((cell) => cell.trim()),
    );
}

function section(readme: string, name: string): string {
  const start = `<!-- ${name}:start -->\n`;
  const end = `<!-- ${name}:end -->`;
  const a = readme.indexOf(start);
  const b = readme.indexOf(end);
  if (a < 0 || b < a) throw new Error(`README.md lacks the ${name} markers`);
  return readme.slice(a + start.length, b);
}

function renderCases(): string {
  const rows = caseSpecs.map((c) => `| \`${c.id}\` | ${c.title} | ${c.requires.map((r) => `\`${r}\``).join(', ') || '—'} |`);
  return ['| id | checks | requires |', '|---|---|---|', ...rows, ''].join('\n');
}

function renderRequirements(): string {
  const rows = Object.entries(requirementRules).map(([name, rule]) => `| \`${name}\` | ${rule.needs} |`);
  return ['| requirement | met when the disk has |', '|---|---|', ...rows, ''].join('\n');
}

describe('README', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  it('lists every case, as the case table says', () => {
    expect(cells(section(readme, 'cases'))).toEqual(cells(renderCases()));
  });
  it('lists every requirement, as the rules say', () => {
    expect(cells(section(readme, 'requirements'))).toEqual(cells(renderRequirements()));
  });
  it('has unique case ids', () => {
    expect(new Set(caseSpecs.map((c) => c.id)).size).toBe(caseSpecs.length);
  });
});
