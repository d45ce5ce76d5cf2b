import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import { open, readFile, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { defineConformance } from '@vd/conformance';
import { peerRequired, skipWithoutPeers } from '@vd/conformance/peers';
import {
  type BlockSource,
  createChild,
  Disk,
  file,
  fileResolver,
  MemorySource,
  memoryDisk,
  openDisk,
  rawFormat,
  vmdkFormat,
} from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, type NbdServerOptions, nbd } from '../../src/index.js';
import { Cmd, encodeClientFlags, encodeOption, HandshakeFlag, Opt, REQUEST_SIZE, writeRequestHeader } from '../../src/protocol.js';
import { run, tempDir } from '../helpers.js';

// The zero-copy READ path (sendfile through @vd/sparse). Without the addon these tests skip,
// unless peers are required (CI), where the addon must have built.
const addon = await import('@vd/sparse').catch(() => undefined);
const skip = (!addon && !peerRequired()) || skipWithoutPeers('nbdcopy', 'nbdinfo', 'qemu-img');

const MiB = 1 << 20;
const SIZE = 24 * MiB + 4096 + 123;

/** A copy of a VMDK made from the raw: the raw's bytes, then zeroes up to the next whole sector. */
function sectorPadded(copy: Buffer): Buffer {
  expect(copy.length).toBe(Math.ceil(SIZE / 512) * 512);
  expect(copy.subarray(SIZE).every((b) => b === 0)).toBe(true);
  return copy.subarray(0, SIZE);
}

describe.skipIf(skip)('NbdServer zero-copy READ replies', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let src: string;
  let want: Buffer;
  let disk: Disk;
  const servers: NbdServer[] = [];

  async function serve(opts: Partial<NbdServerOptions> = {}, where: 'tcp' | 'unix' = 'unix'): Promise<{ server: NbdServer; uri: string }> {
    const server = new NbdServer({ exports: [{ name: 'src', disk }], ...opts });
    servers.push(server);
    const n = servers.length;
    const { uri } =
      where === 'tcp' ? await server.listen({ host: '127.0.0.1', port: 0 }) : await server.listen({ path: join(tmp.dir, `s${n}.sock`) });
    return { server, uri };
  }

  beforeAll(async () => {
    tmp = await tempDir();
    src = join(tmp.dir, 'src.raw');
    // Random data with a hole in the middle and an odd-sized tail.
    want = Buffer.alloc(SIZE);
    randomFillSync(want, 0, 8 * MiB);
    randomFillSync(want, 16 * MiB);
    await writeFile(src, want);
    disk = await openDisk(src, { transports: [file({ formats: [rawFormat] })], readOnly: true });
  });

  afterAll(async () => {
    for (const s of servers) await s.close();
    await disk?.close();
    await tmp?.cleanup();
  });

  it('nbdcopy to a file is byte-identical, over unix and TCP, and the reads went zero-copy', async () => {
    for (const where of ['unix', 'tcp'] as const) {
      const { server, uri } = await serve({}, where);
      const out = join(tmp.dir, `out-${where}.raw`);
      await run('nbdcopy', ['--request-size=1048576', uri, out]);
      expect((await readFile(out)).equals(want)).toBe(true);
      expect(server.stats.zeroCopyReads).toBeGreaterThan(0);
      await server.close();
    }
  });

  it('simple replies (no structured replies, no extended headers) read back exactly', async () => {
    const { server, uri } = await serve({ structuredReplies: false, extendedHeaders: false });
    const remote = await openDisk(uri, { transports: [nbd({ connections: 2 })], readOnly: true });
    try {
      for (const [offset, length] of [
        [0, SIZE],
        [1, 1],
        [7 * MiB + 333, 3 * MiB + 17],
        [SIZE - 123, 123],
      ] as const) {
        const got = await remote.read(offset, length);
        expect(Buffer.from(got).equals(want.subarray(offset, offset + length))).toBe(true);
      }
      expect(server.stats.zeroCopyReads).toBeGreaterThan(0);
    } finally {
      await remote.close();
    }
  });

  it('with zeroCopySends: 0 every read is copied, with the same bytes', async () => {
    const { server, uri } = await serve({ limits: { zeroCopySends: 0 } });
    const out = join(tmp.dir, 'out-copied.raw');
    await run('nbdcopy', [uri, out]);
    expect((await readFile(out)).equals(want)).toBe(true);
    expect(server.stats.zeroCopyReads).toBe(0);
    expect(server.stats.copiedReads).toBeGreaterThan(0);
  });

  it('mixes zero-copy and copied replies on the same connections when send slots run out', async () => {
    const { server, uri } = await serve({ limits: { zeroCopySends: 1 } });
    const out = join(tmp.dir, 'out-mixed.raw');
    await run('nbdcopy', ['--connections=4', '--requests=16', '--request-size=262144', uri, out]);
    expect((await readFile(out)).equals(want)).toBe(true);
    expect(server.stats.zeroCopyReads).toBeGreaterThan(0);
    // Extended headers (our client negotiates them) with many reads in flight on each connection.
    const remote = await openDisk(uri, { transports: [nbd({ connections: 2 })], readOnly: true });
    try {
      const ranges = Array.from({ length: 48 }, (_, i) => [(i * 524_287) % (SIZE - MiB), 1 + ((i * 99_991) % MiB)] as const);
      const got = await Promise.all(ranges.map(([o, n]) => remote.read(o, n)));
      for (const [i, [o, n]] of ranges.entries()) expect(Buffer.from(got[i]!).equals(want.subarray(o, o + n))).toBe(true);
    } finally {
      await remote.close();
    }
  });

  it('READs pipelined on one connection go out in shared sendfile batches, each reply whole', async () => {
    const { server, uri } = await serve();
    const remote = await openDisk(uri, { transports: [nbd({ connections: 1 })], readOnly: true });
    try {
      const ranges = Array.from({ length: 64 }, (_, i) => [(i * 327_673) % (SIZE - 256 * 1024), 256 * 1024 - (i % 3)] as const);
      const got = await Promise.all(ranges.map(([o, n]) => remote.read(o, n)));
      for (const [i, [o, n]] of ranges.entries()) expect(Buffer.from(got[i]!).equals(want.subarray(o, o + n))).toBe(true);
      // The last batch is counted when its job reports back, which may be after the client has the bytes.
      while (server.stats.zeroCopyReads + server.stats.copiedReads < 64) await new Promise((r) => setTimeout(r, 5));
      const { zeroCopyReads, zeroCopyBatches } = server.stats;
      expect(zeroCopyReads).toBe(64);
      expect(zeroCopyBatches).toBeLessThan(zeroCopyReads);
    } finally {
      await remote.close();
    }
  });

  it('a graceful close() lets zero-copy replies in flight finish whole', async () => {
    const { server, uri } = await serve();
    const remote = await openDisk(uri, { transports: [nbd({ connections: 1, retries: 0 })], readOnly: true });
    try {
      const reads = [0, 3, 9, 17].map((m) => remote.read(m * MiB, 4 * MiB));
      // Let the requests reach the server, then close it under them.
      while (server.stats.zeroCopyReads + server.stats.copiedReads === 0 && server.connections > 0) await new Promise(setImmediate);
      const closing = server.close();
      const got = await Promise.all(reads);
      for (const [i, m] of [0, 3, 9, 17].entries()) expect(Buffer.from(got[i]!).equals(want.subarray(m * MiB, (m + 4) * MiB))).toBe(true);
      await closing;
      expect(server.stats.zeroCopyReads).toBeGreaterThan(0);
    } finally {
      await remote.destroy();
    }
  });

  it('serves VMDKs zero-copy where their grains lie in files as they are: a qemu-img sparse VMDK and a redo log over it', async () => {
    const vmdk = join(tmp.dir, 'src.vmdk');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', src, vmdk]);
    const t = file({ formats: [vmdkFormat, rawFormat] });
    await createChild(fileResolver(tmp.dir), 'src.vmdk', 'child.vmdk');
    // The child holds a grain-aligned stretch and a partial grain; the rest falls through to the parent.
    const child = await openDisk(join(tmp.dir, 'child.vmdk'), { transports: [t] });
    const expected = Buffer.from(want);
    const patch = Buffer.alloc(MiB + 100, 0x5a);
    await child.write(3 * MiB, patch);
    patch.copy(expected, 3 * MiB);
    await child.close();
    for (const name of ['src.vmdk', 'child.vmdk']) {
      const d = await openDisk(join(tmp.dir, name), { transports: [t], readOnly: true });
      const server = new NbdServer({ exports: [{ name: 'v', disk: d }] });
      servers.push(server);
      const { uri } = await server.listen({ path: join(tmp.dir, `${name}.sock`) });
      const out = join(tmp.dir, `out-${name}.raw`);
      await run('nbdcopy', ['--request-size=1048576', uri, out]);
      expect(sectorPadded(await readFile(out)).equals(name === 'src.vmdk' ? want : expected)).toBe(true);
      // nbdcopy reads only the data extents; all of those lie in the files.
      expect(server.stats.zeroCopyReads).toBeGreaterThan(0);
      expect(server.stats.copiedReads).toBe(0);
      await server.close();
      await d.close();
    }
  });

  it('copies the READs of a streamOptimized VMDK (compressed grains), with the same bytes', async () => {
    const vmdk = join(tmp.dir, 'stream.vmdk');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, vmdk]);
    const d = await openDisk(vmdk, { transports: [file({ formats: [vmdkFormat, rawFormat] })], readOnly: true });
    const server = new NbdServer({ exports: [{ name: 's', disk: d }] });
    servers.push(server);
    const { uri } = await server.listen({ path: join(tmp.dir, 'stream.sock') });
    const out = join(tmp.dir, 'out-stream.raw');
    await run('nbdcopy', [uri, out]);
    expect(sectorPadded(await readFile(out)).equals(want)).toBe(true);
    expect(server.stats.zeroCopyReads).toBe(0);
    expect(server.stats.copiedReads).toBeGreaterThan(0);
    await server.close();
    await d.close();
  });

  it('copies where the disk cannot map the range (a memory disk), with the same bytes', async () => {
    const mem = memoryDisk(4 * MiB);
    await mem.write(0, want.subarray(0, 4 * MiB));
    const server = new NbdServer({ exports: [{ name: 'mem', disk: mem }] });
    servers.push(server);
    const { uri } = await server.listen({ path: join(tmp.dir, 'mem.sock') });
    const out = join(tmp.dir, 'out-mem.raw');
    await run('nbdcopy', [uri, out]);
    expect((await readFile(out)).equals(want.subarray(0, 4 * MiB))).toBe(true);
    expect(server.stats).toMatchObject({ zeroCopyReads: 0 });
    expect(server.stats.copiedReads).toBeGreaterThan(0);
    await server.close();
    await mem.close();
  });

  it("serves a file sendfile refuses (EINVAL) whole, through the addon's buffer, without dropping the client", async () => {
    // A disk whose bytes lie in /proc/self/environ: pread works on it, sendfile answers EINVAL.
    const want = await readFile('/proc/self/environ');
    const fh = await open('/proc/self/environ', 'r');
    const source: BlockSource = new MemorySource(want.length);
    source._withFileSpans = (offset, length, fn) => fn([{ fd: fh.fd, position: offset, length }]);
    const server = new NbdServer({ exports: [{ name: 'proc', disk: new Disk(source, { readOnly: true }) }] });
    servers.push(server);
    const { uri } = await server.listen({ path: join(tmp.dir, 'proc.sock') });
    const remote = await openDisk(uri, { transports: [nbd({ connections: 1 })], readOnly: true });
    try {
      for (let i = 0; i < 3; i++) expect(Buffer.from(await remote.read(0, want.length)).equals(want)).toBe(true);
      expect(Buffer.from(await remote.read(7, 50)).equals(want.subarray(7, 57))).toBe(true);
      while (server.stats.zeroCopyReads + server.stats.copiedReads < 4) await new Promise((r) => setTimeout(r, 5));
      expect(server.stats).toMatchObject({ zeroCopyReads: 4, copiedReads: 0, bufferedSendBytes: 3 * want.length + 50 });
    } finally {
      await remote.close();
      await server.close();
      await fh.close();
    }
  });

  it('copies a READ whose file spans do not cover it exactly, instead of sending a reply shorter than its header says', async () => {
    // A source (a third-party format, say) whose spans come up one byte short, or empty.
    const fh = await open(src, 'r');
    const source: BlockSource = new MemorySource(SIZE, { data: want });
    source._withFileSpans = (offset, length, fn) => fn(length > 4096 ? [{ fd: fh.fd, position: offset, length: length - 1 }] : []);
    const server = new NbdServer({ exports: [{ name: 'short', disk: new Disk(source, { readOnly: true }) }] });
    servers.push(server);
    const { uri } = await server.listen({ path: join(tmp.dir, 'short.sock') });
    const remote = await openDisk(uri, { transports: [nbd({ connections: 1, retries: 0 })], readOnly: true });
    try {
      const ranges = [
        [0, 65536],
        [MiB + 5, 300_000],
        [3, 100],
      ] as const;
      const got = await Promise.all(ranges.map(([o, n]) => remote.read(o, n)));
      for (const [i, [o, n]] of ranges.entries()) expect(Buffer.from(got[i]!).equals(want.subarray(o, o + n))).toBe(true);
      expect(server.stats).toMatchObject({ zeroCopyReads: 0, copiedReads: 3 });
    } finally {
      await remote.close();
      await server.close();
      await fh.close();
    }
  });

  it('drops a client that stops reading, while another client is served in full', async () => {
    const { server, uri } = await serve({ limits: { sendStallTimeout: 300, zeroCopySends: 1 } });
    const path = decodeURIComponent(new URL(uri).searchParams.get('socket')!);
    const stalled = await stalledClient(path, 16, 8 * MiB);
    // The stalled client holds the only send slot until its stall limit: nbdcopy is copied meanwhile.
    const out = join(tmp.dir, 'out-beside.raw');
    await run('nbdcopy', [uri, out]);
    expect((await readFile(out)).equals(want)).toBe(true);
    // The server drops the stalled client by itself (the test times out if it never does).
    while (server.connections > 0) await new Promise((r) => setTimeout(r, 50));
    // Reading again, the client finds what the kernel buffered and then the end: far less than asked.
    let received = 0;
    stalled.on('data', (c: Buffer) => {
      received += c.length;
    });
    stalled.resume();
    await once(stalled, 'close');
    expect(received).toBeLessThan(16 * 8 * MiB);
    // The server is not stuck: it still closes gracefully.
    await server.close();
    expect(server.connections).toBe(0);
  });
});

/**
 * A client that negotiates (EXPORT_NAME, no zeroes), sends `n` READ requests of `length` bytes
 * and never reads the replies.
 */
async function stalledClient(path: string, n: number, length: number): Promise<Socket> {
  const s = connect(path);
  await once(s, 'connect');
  // Greeting (18 bytes), then the export-name reply (8 + 2 bytes) arrive before we stop reading.
  let got = 0;
  const handshake = new Promise<void>((resolve) => {
    const onData = (c: Buffer) => {
      got += c.length;
      if (got >= 18 + 10) {
        s.off('data', onData);
        s.pause();
        resolve();
      }
    };
    s.on('data', onData);
  });
  s.write(encodeClientFlags(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
  s.write(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode('src')));
  await handshake;
  const reqs = Buffer.alloc(REQUEST_SIZE * n);
  for (let i = 0; i < n; i++) writeRequestHeader(reqs, i * REQUEST_SIZE, false, 0, Cmd.READ, i + 1, (i * MiB) % (16 * MiB), length);
  s.write(reqs);
  return s;
}

// The whole transport suite through our client against a raw file served zero-copy.
{
  const cleanups: (() => Promise<void>)[] = [];
  const suite = defineConformance({
    name: 'nbd client ↔ NbdServer over a raw file (zero-copy reads)',
    factory: async ({ readOnly }) => {
      const t = await tempDir();
      const path = join(t.dir, 'c.raw');
      await writeFile(path, Buffer.alloc(4 * MiB));
      const d = await openDisk(path, { transports: [file({ formats: [rawFormat] })], readOnly });
      const server = new NbdServer({ exports: [{ name: 'c', disk: d }] });
      const { uri } = await server.listen({ path: join(t.dir, 'c.sock') });
      cleanups.push(async () => {
        await server.close();
        await d.close();
        await t.cleanup();
      });
      return openDisk(uri, { transports: [nbd()], readOnly });
    },
    teardown: async () => {
      for (const c of cleanups.splice(0)) await c();
    },
  });
  describe.skipIf(skip)(`conformance: ${suite.name}`, () => {
    afterAll(() => suite.teardown());
    for (const c of suite.cases) it(`${c.id}: ${c.title}`, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }));
  });
}
