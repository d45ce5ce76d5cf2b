import { Disk, MemorySource, type MemorySourceOptions } from '../../src/index.js';
import { runConformance } from './suite.js';

const MiB = 1024 * 1024;

/** One suite per capability variant, so each emulation path of the wrapper is exercised. */
const variants: { name: string; size?: number; source: MemorySourceOptions }[] = [
  { name: 'memory (default)', source: {} },
  { name: "memory (zero: 'emulate')", source: { capabilities: { zero: 'emulate' } } },
  { name: "memory (fua: 'emulate')", source: { capabilities: { fua: 'emulate' } } },
  {
    name: "memory (trim: 'emulate', fua: 'none', no flush)",
    source: { capabilities: { trim: 'emulate', trimReadsZero: false, fua: 'none', flush: false } },
  },
  { name: 'memory (serial)', source: { capabilities: { concurrency: { model: 'serial', maxInFlight: 1 } } } },
  {
    name: 'memory (blockSize 512..64K, granularity 512)',
    size: 3 * MiB + 512,
    source: { granularity: 512, capabilities: { blockSize: { minimum: 512, preferred: 4096, maximum: 64 * 1024 } } },
  },
  { name: 'memory (no extents, no zero, no trim)', source: { capabilities: { extents: [], zero: 'none', trim: 'none', fastZero: false } } },
];

for (const v of variants) {
  runConformance({
    name: v.name,
    factory: async ({ readOnly }) => new Disk(new MemorySource(v.size ?? 2 * MiB, v.source), { readOnly }),
  });
}

// Read-only: a disk with contents, opened read-only every time (writable cases skip on it).
const contents = new Uint8Array(2 * MiB).map((_, i) => (i % 4096 < 2048 ? (i * 31) & 0xff : 0));
runConformance({
  name: 'memory (read-only, with contents)',
  factory: async () => new Disk(new MemorySource(contents.length, { data: contents }), { readOnly: true }),
});
