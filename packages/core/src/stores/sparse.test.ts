import { describe, expect, it } from 'vitest';
import { loadSparseAddon as exported } from '../index.js';
import { loadSparse, loadSparseAddon } from './sparse.js';

// Built in CI (VD_REQUIRE_PEERS=1); elsewhere the addon may be absent, and then nothing is loaded.
const requirePeers = process.env.VD_REQUIRE_PEERS === '1';

describe('loadSparseAddon', () => {
  it('is exported by @vd/core and imports @vd/sparse once, for every caller', async () => {
    expect(exported).toBe(loadSparseAddon);
    const first = loadSparseAddon();
    expect(loadSparseAddon()).toBe(first);
    const addon = await first;
    if (requirePeers) expect(addon).toBeDefined();
    const ops = await loadSparse();
    if (addon === undefined) {
      expect(ops).toBeUndefined();
      return;
    }
    // The hole calls are the addon's own functions, not a second copy of the module.
    expect(ops?.seekData).toBe(addon.seekData);
    expect(ops?.seekHole).toBe(addon.seekHole);
    expect(ops?.punchHole).toBe(addon.punchHole);
  });
});
