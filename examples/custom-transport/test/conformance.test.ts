import { runConformance } from '@vd/conformance/vitest';
import { memoryDisk, openDisk } from '@vd/core';
import { afterAll } from 'vitest';
import { httpRange } from '../src/http-range.js';
import { serveDisk } from '../src/server.js';

const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of closers) await c();
});

runConformance({
  name: 'http-range transport (example plugin)',
  factory: async ({ readOnly }) => {
    const served = await serveDisk(memoryDisk(2 * 1024 * 1024));
    closers.push(served.close);
    return openDisk(served.url, { readOnly, transports: [httpRange()] });
  },
});
