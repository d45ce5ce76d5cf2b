import { describe, expect, it } from 'vitest';
import { defaultCapabilities, effectiveCapabilities, readOnlyCapabilities } from './capabilities.js';
import type { BlockSource } from './spec.js';

describe('readOnlyCapabilities', () => {
  it('turns every write-side capability off and keeps the rest', () => {
    const rw = { ...defaultCapabilities, zero: 'native', fastZero: true, trim: 'native', trimReadsZero: true, extents: ['x'] } as const;
    const ro = readOnlyCapabilities(rw);
    expect(ro).toEqual({
      ...rw,
      readOnly: true,
      flush: false,
      fua: 'none',
      zero: 'none',
      fastZero: false,
      trim: 'none',
      trimReadsZero: false,
    });
    // A source with only a read method and these capabilities is accepted as declared.
    const source: BlockSource = { size: 512, capabilities: ro, _read: async () => {}, _extents: async () => [], _close: async () => {} };
    expect(effectiveCapabilities(source)).toMatchObject({ readOnly: true, zero: 'none', trim: 'none', extents: ['x'] });
  });
});
