import { describe, expect, it } from 'vitest';
import { vd } from './run.js';

describe('vd demo', () => {
  it('creates, fills, converts with verify and compares, and says so', async () => {
    const r = await vd('demo', '--size', '64M', '--json');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.steps.map((s: { step: string }) => s.step)).toEqual(['create', 'write', 'convert', 'verify', 'cmp', 'sparse']);
    expect(doc.ok).toBe(true);
    expect(doc.steps.every((s: { ok: boolean }) => s.ok)).toBe(true);
    expect(doc.convert.verified).toBe(true);
    expect(doc.cmp.identical).toBe(true);
    expect(doc.allocatedBytes).toBeLessThan(64 * 2 ** 20);
  });

  it('prints a table for people', async () => {
    const r = await vd('demo', '--size', '48M');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^step +result +detail$/m);
    expect(r.stdout).toMatch(/^verify +ok +/m);
    expect(r.stdout).toMatch(/^cmp +ok +identical/m);
    expect(r.stdout).not.toMatch(/FAILED/);
  });
});
