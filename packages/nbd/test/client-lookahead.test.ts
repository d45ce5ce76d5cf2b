import { join } from 'node:path';
import { Disk, type Extent, MemorySource, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NbdServer, nbd } from '../src/index.js';
import { tempDir } from './helpers.js';

// Counts the client's socket reads: node:net as is, with the `onread` buffer callback observed.
const reads = vi.hoisted(() => ({ count: 0 }));
vi.mock('node:net', async (importOriginal) => {
  const net = await importOriginal<typeof import('node:net')>();
  const connect = (opts: Parameters<typeof net.connect>[0], ...rest: unknown[]) => {
    const onread = (opts as { onread?: { buffer: () => Uint8Array } }).onread;
    if (onread) {
      const buffer = onread.buffer;
      onread.buffer = () => {
        reads.count++;
        return buffer();
      };
    }
    return (net.connect as (...a: unknown[]) => unknown)(opts, ...rest);
  };
  return { ...net, connect, createConnection: connect, default: { ...net, connect, createConnection: connect } };
});

describe('NBD client: a large non-data reply while a READ is in flight', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    tmp = await tempDir();
  });
  afterAll(async () => {
    await tmp.cleanup();
  });

  it('is received in a few large reads, not header-sized ones', async () => {
    const size = 1 << 30;
    const grain = 4096;
    const source = new MemorySource(size);
    // 4 KiB data and holes alternating: the server's answer holds its full 65536 descriptors.
    source._extents = async (offset: number, length: number): Promise<Extent[]> => {
      const out: Extent[] = [];
      for (let at = offset; at < offset + length && out.length < 100_000; ) {
        const n = Math.min(grain - (at % grain), offset + length - at);
        out.push({ offset: at, length: n, type: Math.floor(at / grain) % 2 ? 'hole' : 'data' });
        at += n;
      }
      return out;
    };
    // A READ that the server holds until the block status reply has arrived.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let arrived!: () => void;
    const readArrived = new Promise<void>((r) => (arrived = r));
    const read = source._read.bind(source);
    source._read = async (offset, into, opts) => {
      arrived();
      await gate;
      return read(offset, into, opts);
    };
    const server = new NbdServer({ exports: [{ name: 'd', disk: new Disk(source) }] });
    const { uri } = await server.listen({ path: join(tmp.dir, 's.sock') });
    const remote = await openDisk(uri, { transports: [nbd({ connections: 1 })], readOnly: true });
    try {
      const reading = remote.read(0, 4096);
      await readArrived;
      const before = reads.count;
      const extents: Extent[] = [];
      for await (const e of remote.extents({ offset: 0, length: size })) {
        extents.push(e);
        if (extents.length >= 65536) break;
      }
      const used = reads.count - before;
      release();
      await reading;
      expect(extents.length).toBe(65536);
      // The reply is about 1 MiB (or 512 KiB compact): a few dozen reads at most, not one per 40 bytes.
      expect(used).toBeLessThan(200);
    } finally {
      release();
      await remote.close();
      await server.close();
    }
  });
});
