import { randomFillSync } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { peerRequired, skipWithoutPeers } from '@vd/conformance/peers';
import { copyDisk, type Disk, file, isVdError, memoryDisk, openDisk, rawFormat } from '@vd/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, nbd } from '../src/index.js';
import { defaultZeroCopySends } from '../src/sendfile.js';
import { run, sparseRaw, tcpProxy } from './helpers.js';
import { listenOnBoth, nbdkitScratch } from './peers.js';

const MiB = 1 << 20;
const SIZE = 24 * MiB;

// Without the addon (or with VD_NBD_ZEROCOPY=0) every payload is copied; in CI the addon is required.
const addon = await import('@vd/sparse').catch(() => undefined);
const skip = ((!addon || process.env.VD_NBD_ZEROCOPY === '0') && !peerRequired()) || process.platform !== 'linux';

const openFds = () => readdirSync('/proc/self/fd').length;
const zeroCopyWrites = (disk: Disk) => disk.info().zeroCopyWrites as number;

// A copy reads each chunk (the zero check needs its bytes), then, from a local file onto a plain
// NBD socket, sends the payload from the file with sendfile instead of from the buffer.
describe.skipIf(skip)('NBD client: WRITE payloads sent from files (sendfile)', () => {
  let srcPath: string;
  let expected: Buffer;
  const target = memoryDisk(SIZE);
  const server = new NbdServer({ exports: [{ name: 'd', disk: target }] });
  const uris = listenOnBoth(server, () => target.close());
  const fileT = file({ formats: [rawFormat] });

  beforeAll(async () => {
    srcPath = join(uris.dir, 'src.raw');
    // Data, an all-zero allocated chunk, data, a hole, data up to the end.
    const a = randomFillSync(Buffer.alloc(7 * MiB));
    const b = randomFillSync(Buffer.alloc(5 * MiB + 4096));
    const c = randomFillSync(Buffer.alloc(4 * MiB));
    await sparseRaw(srcPath, SIZE, [
      [0, a],
      [7 * MiB, Buffer.alloc(2 * MiB)],
      [9 * MiB, b],
      [SIZE - c.length, c],
    ]);
    expected = await readFile(srcPath);
  });

  const cases = [
    { where: 'unix', extendedHeaders: true },
    { where: 'tcp', extendedHeaders: true },
    { where: 'unix', extendedHeaders: false },
    { where: 'tcp', extendedHeaders: false },
  ] as const;
  it.each(cases)(
    'over $where (extended headers: $extendedHeaders): the copy is exact and its data went by sendfile',
    async ({ where, extendedHeaders }) => {
      await target.write(0, randomFillSync(Buffer.alloc(SIZE)));
      const before = openFds();
      const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
      const dst = await openDisk(uris[where], { transports: [nbd({ extendedHeaders })] });
      try {
        expect(dst.info().extendedHeaders).toBe(extendedHeaders);
        const result = await copyDisk(src, dst, { chunkSize: 2 * MiB, targetIsZero: false });
        // In 2 MiB chunks: 0-14 MiB (the zeroes at 7-9 MiB share chunks with data), the 4 KiB of
        // `b` past 14 MiB, 20-24 MiB: 7 + 1 + 2 writes.
        expect(result.bytesWritten).toBe(18 * MiB + 4096);
        expect(zeroCopyWrites(dst)).toBe(10);
      } finally {
        await dst.close();
        await src.close();
      }
      expect(Buffer.compare(await target.read(0, SIZE), expected)).toBe(0);
      // A graceful close leaves no descriptor behind: not the payloads' dups, not the socket's.
      await expect.poll(openFds, { timeout: 2000 }).toBeLessThanOrEqual(before);
    },
  );

  it('copies through buffers where digests are taken: they describe the bytes written', async () => {
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const dst = await openDisk(uris.unix, { transports: [nbd()] });
    try {
      await copyDisk(src, dst, { targetIsZero: false, checksums: true });
      expect(zeroCopyWrites(dst)).toBe(0);
    } finally {
      await dst.close();
      await src.close();
    }
    expect(Buffer.compare(await target.read(0, SIZE), expected)).toBe(0);
  });

  it('keeps the request stream whole: sendfile WRITEs mixed with buffered ones on one connection', async () => {
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const dst = await openDisk(uris.tcp, { transports: [nbd({ connections: 1 })] });
    const fresh = randomFillSync(Buffer.alloc(SIZE));
    const want = Buffer.from(fresh);
    try {
      const writes: Promise<unknown>[] = [];
      for (let at = 0, i = 0; at < SIZE; i++) {
        const n = Math.min(SIZE - at, [4096, 300 * 1024, MiB, 2 * MiB + 512][i % 4]!);
        const offset = at;
        if (i % 3 === 1) {
          writes.push(dst.write(offset, fresh.subarray(offset, offset + n)));
        } else {
          want.set(expected.subarray(offset, offset + n), offset);
          writes.push(src.withFileSpans(offset, n, (spans) => dst.writeFileSpans(offset, spans)).then((ok) => expect(ok).toBe(true)));
        }
        at += n;
      }
      await Promise.all(writes);
      await dst.flush();
      expect(zeroCopyWrites(dst)).toBeGreaterThan(20);
    } finally {
      await dst.close();
      await src.close();
    }
    expect(Buffer.compare(await target.read(0, SIZE), want)).toBe(0);
  });

  it('a connection the server drops under a payload fails the copy with a coded error and leaves no descriptor open', async () => {
    // Cut both sides once 5 MiB came from the client: in the middle of a payload.
    const proxy = await tcpProxy(uris.tcp, { cutAfter: 5 * MiB });
    const port = proxy.port;
    const before = openFds();
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const dst = await openDisk(`nbd://127.0.0.1:${port}/d`, { transports: [nbd({ connections: 1, retries: 0 })] });
    try {
      const err = await copyDisk(src, dst, { targetIsZero: false }).catch((e: unknown) => e);
      expect(isVdError(err, 'ERR_VD_IO')).toBe(true);
      expect((err as Error).message).toMatch(/lost/);
    } finally {
      await dst.close();
      await src.close();
      await proxy.close();
    }
    // The dup'd socket and span descriptors are closed once the send stopped (within ~100 ms).
    await expect.poll(openFds, { timeout: 2000 }).toBeLessThanOrEqual(before);
  });

  it('destroy during a copy stops the sends and closes their descriptors', async () => {
    const before = openFds();
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const dst = await openDisk(uris.unix, { transports: [nbd()] });
    const copying = copyDisk(src, dst, { targetIsZero: false, chunkSize: MiB }).catch((e: unknown) => e);
    await expect.poll(() => zeroCopyWrites(dst), { interval: 1 }).toBeGreaterThan(0);
    await dst.destroy();
    expect(isVdError(await copying)).toBe(true);
    await src.close();
    await expect.poll(openFds, { timeout: 2000 }).toBeLessThanOrEqual(before);
  });

  it('sends zero-copy on as many connections at once as there are slots; another answers false at once instead of waiting', async () => {
    const slots = Math.min(2, defaultZeroCopySends());
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const disks = await Promise.all(
      Array.from({ length: slots + 1 }, () => openDisk(uris.unix, { transports: [nbd({ connections: 1 })] })),
    );
    try {
      await src.withFileSpans(0, 4 * MiB, async (spans) => {
        // Each of the first `slots` disks holds a slot while its WRITE is queued or under way.
        const holding = disks.slice(0, slots).map((d, i) => d.writeFileSpans(i * 4 * MiB, spans));
        expect(await disks[slots]!.writeFileSpans(20 * MiB, spans)).toBe(false);
        expect(await Promise.all(holding)).toEqual(disks.slice(0, slots).map(() => true));
        // Done, they gave their slots back.
        expect(await disks[slots]!.writeFileSpans(20 * MiB, spans)).toBe(true);
      });
    } finally {
      await Promise.all(disks.map((d) => d.close()));
      await src.close();
    }
    for (let i = 0; i < slots; i++) expect(Buffer.compare(await target.read(i * 4 * MiB, 4 * MiB), expected.subarray(0, 4 * MiB))).toBe(0);
    expect(Buffer.compare(await target.read(20 * MiB, 4 * MiB), expected.subarray(0, 4 * MiB))).toBe(0);
  });

  it('answers false, sending nothing, where it cannot: a disk in memory, a request above the block size maximum', async () => {
    const src = await openDisk(srcPath, { transports: [fileT], readOnly: true });
    const mem = memoryDisk(SIZE);
    // A server taking requests of at most 4 MiB.
    const small = new NbdServer({ exports: [{ name: 'd', disk: mem }], limits: { maxPayload: 4 * MiB } });
    const dst = await openDisk((await small.listen({ port: 0 })).uri, { transports: [nbd({ connections: 1 })] });
    try {
      expect(await src.withFileSpans(0, MiB, (spans) => mem.writeFileSpans(0, spans))).toBe(false);
      const max = dst.capabilities.blockSize.maximum;
      expect(max).toBeLessThan(SIZE);
      await src.withFileSpans(0, MiB, async ([span]) => {
        // Two spans of the file adding up to one byte more than a request may carry.
        const over = [
          { ...span!, length: max / 2 },
          { ...span!, length: max / 2 + 1 },
        ];
        expect(await dst.writeFileSpans(0, over)).toBe(false);
      });
      expect(zeroCopyWrites(dst)).toBe(0);
      expect(await src.withFileSpans(0, 4 * MiB, (spans) => dst.writeFileSpans(0, spans))).toBe(true);
      expect(zeroCopyWrites(dst)).toBe(1);
    } finally {
      await dst.close();
      await small.close();
      await mem.close();
      await src.close();
    }
  });
});

describe.skipIf(skip || skipWithoutPeers('nbdkit'))('NBD client sendfile WRITEs into nbdkit', () => {
  const scratch = nbdkitScratch();

  it('nbdkit file receives a copy identical to the source (cmp), its payloads sent with sendfile', async () => {
    const srcPath = join(scratch.dir(), 'src.raw');
    const outPath = join(scratch.dir(), 'out.raw');
    await writeFile(srcPath, randomFillSync(Buffer.alloc(12 * MiB)));
    await writeFile(outPath, Buffer.alloc(0));
    await run('truncate', ['-s', String(12 * MiB), outPath]);
    const kit = await scratch.fileExport(outPath);
    const src = await openDisk(srcPath, { transports: [file({ formats: [rawFormat] })], readOnly: true });
    const dst = await openDisk(kit.uri, { transports: [nbd()] });
    try {
      await copyDisk(src, dst, { targetIsZero: false });
      expect(zeroCopyWrites(dst)).toBe(6);
    } finally {
      await dst.close();
      await src.close();
    }
    await run('cmp', [srcPath, outPath]);
  });
});
