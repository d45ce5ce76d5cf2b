import { join } from 'node:path';
import { readSpans } from '@vd/conformance';
import { memoryDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bitmapView, mark, track, trackerOf } from '../src/index.js';
import { fileDisk, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

describe('zero-copy reads through a tracked disk', () => {
  it('a tracked Disk over a local file, and a bitmap view of it, give the file spans that hold a range', async () => {
    const raw = await fileDisk(join(dir, 'd.img'), 1 << 20);
    const data = new Uint8Array(65536).map((_, i) => (i * 7) & 0xff);
    const disk = await track(raw, { path: join(dir, 'd.cbt'), granularity: 4096 });
    try {
      await disk.write(4096, data);
      const spans = await disk.withFileSpans(4096, data.length, async (s) => readSpans(s));
      expect(spans).toBeDefined();
      expect(Buffer.from(spans!).equals(data)).toBe(true);
      const view = bitmapView(disk, trackerOf(disk), { name: 'b', since: await mark(disk) });
      const seen = await view.withFileSpans(4096, data.length, async (s) => readSpans(s));
      expect(seen).toBeDefined();
      expect(Buffer.from(seen!).equals(data)).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('a tracked memory disk has no file spans', async () => {
    const disk = await track(memoryDisk(65536), { path: join(dir, 'm.cbt'), granularity: 4096 });
    try {
      expect(await disk.withFileSpans(0, 4096, async () => true)).toBeUndefined();
    } finally {
      await disk.close();
    }
  });
});
