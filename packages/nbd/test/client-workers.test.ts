import { randomFillSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { defineConformance } from '@vd/conformance';
import { peerRequired, skipWithoutPeers } from '@vd/conformance/peers';
import { copyDisk, type Disk, file, memoryDisk, openDisk, rawFormat } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NbdServer, nbd, setWorkerIdleTime, workersAvailable, workerThreadStats } from '../src/index.js';
import { tempDir } from './helpers.js';
import { listenOnBoth, nbdkitScratch } from './peers.js';

/**
 * Plaintext connections in worker threads (`workers: true`, `workers=` in the URI,
 * `VD_NBD_WORKERS`; off by default): reads, writes and every command through them, over unix
 * sockets and TCP; sendfile WRITEs kept on the connection in this thread; threads reused across
 * disks. The worker runs the built package (a thread cannot load TypeScript): without
 * `pnpm build` these are skipped, or fail in CI.
 */

const MiB = 1 << 20;
const noWorkers = !workersAvailable();
if (noWorkers && peerRequired()) throw new Error('the nbd connection worker is not built: run pnpm build first');
const skip = noWorkers || process.platform !== 'linux';

/** Waits until `n` worker connections have joined the disk's first one. */
async function joined(disk: Disk, n: number): Promise<void> {
  await vi.waitFor(() => expect(disk.info().workerConnections).toBe(n), { timeout: 20_000, interval: 20 });
}

describe.skipIf(skip)('NBD client: plaintext connections in worker threads', () => {
  const data = randomFillSync(Buffer.alloc(8 * MiB));
  const source = memoryDisk(8 * MiB);
  const server = new NbdServer({ exports: [{ name: 'd', disk: source }] });
  const served = listenOnBoth(server, () => source.close());

  beforeAll(async () => {
    await source.write(0, data);
  });

  it('off by default; on with the option, the URI or the environment, the URI first, then the option', async () => {
    const counts: Record<string, unknown> = {};
    const env = process.env.VD_NBD_WORKERS;
    delete process.env.VD_NBD_WORKERS;
    try {
      for (const [name, uri, readOnly, opts] of [
        ['default, unix', served.unix, true, {}],
        ['default, tcp', served.tcp, false, {}],
        ['option true, unix', served.unix, true, { workers: true }],
        ['uri false', `${served.unix}&workers=false`, true, { workers: true }],
        ['uri true', `${served.unix}&workers=true`, true, { workers: false }],
        ['option true, tcp, writable', served.tcp, false, { workers: true }],
      ] as const) {
        const disk = await openDisk(uri, { transports: [nbd({ connections: 2, ...opts })], readOnly });
        if (name.includes('true')) await joined(disk, 1);
        counts[name] = disk.info().workerConnections;
        expect(Buffer.compare(Buffer.from(await disk.read(MiB, MiB)), data.subarray(MiB, 2 * MiB))).toBe(0);
        await disk.close();
      }
      process.env.VD_NBD_WORKERS = '1';
      const on = await openDisk(served.unix, { transports: [nbd({ connections: 2 })], readOnly: true });
      await joined(on, 1);
      counts['env 1'] = on.info().workerConnections;
      await on.close();
      const optionWins = await openDisk(served.unix, { transports: [nbd({ connections: 2, workers: false })], readOnly: true });
      counts['env 1, option false'] = optionWins.info().workerConnections;
      await optionWins.close();
    } finally {
      if (env === undefined) delete process.env.VD_NBD_WORKERS;
      else process.env.VD_NBD_WORKERS = env;
    }
    expect(counts).toEqual({
      'default, unix': 0,
      'default, tcp': 0,
      'option true, unix': 1,
      'uri false': 0,
      'uri true': 1,
      'option true, tcp, writable': 1,
      'env 1': 1,
      'env 1, option false': 0,
    });
  });

  it('reads in flight on every connection land exact; the next disk reuses the threads', async () => {
    setWorkerIdleTime(60_000);
    try {
      const open = () => openDisk(served.unix, { transports: [nbd({ connections: 3, workers: true })], readOnly: true });
      const first = await open();
      await joined(first, 2);
      const parts = await Promise.all(Array.from({ length: 32 }, (_, i) => first.read((i % 8) * MiB, MiB)));
      for (const [i, p] of parts.entries())
        expect(Buffer.compare(Buffer.from(p), data.subarray((i % 8) * MiB, ((i % 8) + 1) * MiB))).toBe(0);
      await first.close();
      const before = workerThreadStats();
      const second = await open();
      await joined(second, 2);
      expect(workerThreadStats().started).toBe(before.started);
      expect(workerThreadStats().reused).toBe(before.reused + 2);
      expect(Buffer.compare(Buffer.from(await second.read(7 * MiB, MiB)), data.subarray(7 * MiB))).toBe(0);
      await second.close();
    } finally {
      setWorkerIdleTime(10_000);
    }
  });

  it('a writable disk with workers: a copy from a file still sends with sendfile, on the connection in this thread; the data lands exact', async () => {
    const target = memoryDisk(8 * MiB);
    const writable = new NbdServer({ exports: [{ name: 'w', disk: target }] });
    const { uri } = await writable.listen({ path: join(served.dir, 'w.sock') });
    const srcPath = join(served.dir, 'src.raw');
    await writeFile(srcPath, data);
    const src = await openDisk(srcPath, { transports: [file({ formats: [rawFormat] })], readOnly: true });
    const dst = await openDisk(uri, { transports: [nbd({ connections: 2, workers: true })] });
    try {
      await joined(dst, 1);
      await copyDisk(src, dst, { targetIsZero: false, chunkSize: MiB });
      // Every chunk: the worker connection cannot send from files, so none is refused there.
      expect(dst.info().zeroCopyWrites).toBe(8);
      // Buffered writes, zero, trim and flush go through the worker connection too.
      await Promise.all([dst.write(0, Buffer.alloc(4096, 7)), dst.write(MiB, Buffer.alloc(4096, 8))]);
      await Promise.all([dst.zero(2 * MiB, 4096), dst.trim(3 * MiB, 4096), dst.flush()]);
      await dst.close();
      const back = Buffer.from(await target.read(0, 8 * MiB));
      expect(back.subarray(0, 4096).every((b) => b === 7)).toBe(true);
      expect(back.subarray(MiB, MiB + 4096).every((b) => b === 8)).toBe(true);
      expect(back.subarray(2 * MiB, 2 * MiB + 4096).every((b) => b === 0)).toBe(true);
      expect(back.subarray(3 * MiB, 3 * MiB + 4096).every((b) => b === 0)).toBe(true);
      expect(Buffer.compare(back.subarray(4096, MiB), data.subarray(4096, MiB))).toBe(0);
      expect(Buffer.compare(back.subarray(4 * MiB), data.subarray(4 * MiB))).toBe(0);
    } finally {
      await dst.close();
      await src.close();
      await writable.close();
    }
  });
});

if (!skip) {
  const servers: NbdServer[] = [];
  let tmp: Awaited<ReturnType<typeof tempDir>> | undefined;
  const suite = defineConformance({
    name: 'nbd client, worker connections ↔ NbdServer on a unix socket',
    factory: async ({ readOnly }) => {
      tmp ??= await tempDir();
      const server = new NbdServer({ exports: [{ name: 'c', disk: memoryDisk(4 * MiB) }] });
      servers.push(server);
      const { uri } = await server.listen({ path: join(tmp.dir, `c${servers.length}.sock`) });
      return openDisk(uri, { transports: [nbd({ connections: 2, workers: true })], readOnly });
    },
  });
  describe(`conformance: ${suite.name}`, () => {
    afterAll(async () => {
      await suite.teardown();
      for (const s of servers) await s.close();
      await tmp?.cleanup();
    });
    for (const c of suite.cases) it(`${c.id}: ${c.title}`, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }));
  });
}

describe.skipIf(skip || skipWithoutPeers('nbdkit'))('NBD client worker connections against nbdkit file', () => {
  const scratch = nbdkitScratch();

  it('reads the whole export exact with the connection after the first in a worker thread', async () => {
    const srcPath = join(scratch.dir(), 'src.raw');
    const bytes = randomFillSync(Buffer.alloc(16 * MiB));
    await writeFile(srcPath, bytes);
    const kit = await scratch.fileExport(srcPath);
    const disk = await openDisk(kit.uri, { transports: [nbd({ connections: 2, workers: true })], readOnly: true });
    try {
      await joined(disk, 1);
      const parts = await Promise.all(Array.from({ length: 16 }, (_, i) => disk.read(i * MiB, MiB)));
      expect(Buffer.compare(Buffer.concat(parts), bytes)).toBe(0);
    } finally {
      await disk.close();
    }
  });
});
