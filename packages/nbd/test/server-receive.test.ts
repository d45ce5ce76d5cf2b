import { randomFillSync } from 'node:crypto';
import { memoryDisk, openDisk } from '@vd/core';
import { describe, expect, it } from 'vitest';
import { NbdServer, nbd } from '../src/index.js';
import { listenOnBoth } from './peers.js';

const MiB = 1 << 20;

// The server reads WRITE payloads straight into the request's pooled buffer once the header is in
// (see ServerConnection#receiveDirect); only the read that carried a header brings payload bytes
// through the connection's scratch buffer.
describe('NbdServer receives WRITE payloads into their own buffers', () => {
  const target = memoryDisk(16 * MiB);
  const server = new NbdServer({ exports: [{ name: 'd', disk: target }] });
  const uris = listenOnBoth(server, () => target.close());

  it.each(['unix', 'tcp'] as const)('over %s: the bytes land, nearly all of them read straight into the request buffers', async (where) => {
    const data = randomFillSync(Buffer.alloc(16 * MiB));
    const before = server.stats.directWriteBytes;
    const disk = await openDisk(uris[where], { transports: [nbd()] });
    try {
      // 2 MiB requests, 8 in flight: the payloads queue up in the socket behind their headers.
      await Promise.all(Array.from({ length: 8 }, (_, i) => disk.write(i * 2 * MiB, data.subarray(i * 2 * MiB, (i + 1) * 2 * MiB))));
      await disk.flush();
    } finally {
      await disk.close();
    }
    expect(Buffer.compare(await target.read(0, data.length), data)).toBe(0);
    const direct = server.stats.directWriteBytes - before;
    // At most the 64 KiB scratch read that carried each header comes another way.
    expect(direct).toBeGreaterThanOrEqual(data.length - 8 * (64 << 10));
    expect(direct).toBeLessThanOrEqual(data.length);
  });
});
