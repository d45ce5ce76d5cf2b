import { describe, expect, it } from 'vitest';
import { vd } from './run.js';

describe('vd demo', () => {
  it('runs the backup tour on an embedded host and proves every restore equal to its snapshot', async () => {
    const r = await vd('demo', '--size', '96M', '--json');
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.steps.map((s: { step: string }) => s.step)).toEqual([
      'host',
      'write',
      'full backup',
      'change',
      'incremental',
      'verify',
      'restore 0001',
      'restore 0002',
    ]);
    expect(doc.ok).toBe(true);
    expect(doc.steps.every((s: { ok: boolean }) => s.ok)).toBe(true);
    expect(doc.full).toMatchObject({ point: '0001', kind: 'full', strategy: 'host-snapshot' });
    expect(doc.incremental).toMatchObject({ point: '0002', kind: 'incremental', parent: '0001', strategy: 'host-snapshot' });
    // About 1% of the allocated data changed: the incremental reads at most 3% of what the full read.
    expect(doc.incremental.bytesRead).toBeGreaterThan(0);
    expect(doc.incremental.bytesRead).toBeLessThanOrEqual(0.03 * doc.full.bytesRead);
    expect(doc.verified).toEqual({ repository: true, restoredIdenticalToSnapshots: [true, true] });
  });

  it('prints the comparison and the steps for people', async () => {
    const r = await vd('demo', '--size', '80M');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^POINT +READ +TIME +THROUGHPUT$/m);
    expect(r.stdout).toMatch(/^0001 full +/m);
    expect(r.stdout).toMatch(/^0002 incremental +/m);
    expect(r.stdout).toMatch(/^restore 0002 +ok +.*identical to snapshot 2/m);
    expect(r.stdout).not.toMatch(/FAILED/);
  });
});
