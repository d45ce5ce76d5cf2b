import * as diagnosticsChannel from 'node:diagnostics_channel';
import { fstatSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSpans } from '../../conformance/src/index.js';
import { createDisk } from './create.js';
import type { Disk } from './disk.js';
import { isVdError } from './errors.js';
import { rawFormat } from './formats/raw.js';
import { vmdkFormat } from './formats/vmdk/index.js';
import { memoryDisk } from './memory.js';
import { openDisk } from './open-disk.js';
import { file } from './transports/file.js';

const SIZE = 1 << 20;
let dir: string;
let rawPath: string;
const bytes = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i++) bytes[i] = (i * 7 + (i >> 11)) & 255;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-spans-'));
  rawPath = join(dir, 'a.raw');
  await writeFile(rawPath, bytes);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const openRaw = (readOnly = true): Promise<Disk> => openDisk(rawPath, { transports: [file({ formats: [rawFormat] })], readOnly });

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe('Disk.withFileSpans', () => {
  it('maps a raw file range to spans whose bytes are the disk bytes', async () => {
    const disk = await openRaw();
    try {
      for (const [offset, length] of [
        [0, SIZE],
        [4096, 65536],
        [SIZE - 1, 1],
        [12345, 777],
      ] as const) {
        const got = await disk.withFileSpans(offset, length, async (s) => {
          expect(s.reduce((n, x) => n + x.length, 0)).toBe(length);
          return readSpans(s);
        });
        expect(got).toBeDefined();
        // Buffer.equals: vitest's deep equality is slow on megabytes.
        expect(Buffer.from(got!).equals(await disk.read(offset, length))).toBe(true);
        expect(Buffer.from(got!).equals(bytes.subarray(offset, offset + length))).toBe(true);
      }
    } finally {
      await disk.close();
    }
  });

  it('checks the range like a read does', async () => {
    const disk = await openRaw();
    try {
      const fn = async () => true;
      await expect(disk.withFileSpans(SIZE - 10, 11, fn)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_OUT_OF_RANGE'));
      await expect(disk.withFileSpans(0, 0, fn)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_INVALID_ARGUMENT'));
      await expect(disk.withFileSpans(-1, 10, fn)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_INVALID_ARGUMENT'));
      await expect(disk.withFileSpans(0.5, 10, fn)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_INVALID_ARGUMENT'));
      const ac = new AbortController();
      ac.abort();
      await expect(disk.withFileSpans(0, 10, fn, { signal: ac.signal })).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_ABORTED'));
    } finally {
      await disk.close();
    }
    await expect(disk.withFileSpans(0, 10, async () => true)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_CLOSED'));
  });

  it('answers undefined without calling fn where the source cannot map (memory, an unwritten sparse VMDK)', async () => {
    let called = 0;
    const fn = async () => {
      called++;
      return true;
    };
    const mem = memoryDisk(SIZE);
    expect(await mem.withFileSpans(0, 4096, fn)).toBeUndefined();
    await mem.close();

    const vmdkPath = join(dir, 'a.vmdk');
    const t = file({ formats: [vmdkFormat, rawFormat] });
    await createDisk(vmdkPath, { size: SIZE, format: 'vmdk' });
    const vmdk = await openDisk(vmdkPath, { transports: [t], readOnly: true });
    expect(vmdk.info().format).toBe('vmdk');
    expect(await vmdk.withFileSpans(0, 4096, fn)).toBeUndefined();
    await vmdk.close();
    expect(called).toBe(0);
  });

  it('keeps the descriptor open while fn runs: close() waits for it', async () => {
    const disk = await openRaw();
    const gate = deferred();
    let fd = -1;
    const using = disk.withFileSpans(0, 4096, async (spans) => {
      fd = spans[0]!.fd;
      await gate.promise;
      return readSpans(spans);
    });
    await new Promise((r) => setTimeout(r, 10));
    expect(disk.pending).toBe(1);
    let closed = false;
    const closing = disk.close().then(() => {
      closed = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(closed).toBe(false);
    expect(fstatSync(fd).size).toBe(SIZE);
    gate.resolve();
    expect(await using).toEqual(bytes.subarray(0, 4096));
    await closing;
    expect(closed).toBe(true);
    expect(() => fstatSync(fd)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('keeps the descriptor open while fn runs even through destroy()', async () => {
    const disk = await openRaw();
    const gate = deferred();
    const entered = deferred();
    let fd = -1;
    const using = disk.withFileSpans(0, 4096, async (spans) => {
      fd = spans[0]!.fd;
      entered.resolve();
      await gate.promise;
      return readSpans(spans);
    });
    await entered.promise;
    let destroyed = false;
    const destroying = disk.destroy().then(() => {
      destroyed = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(destroyed).toBe(false);
    expect(fstatSync(fd).size).toBe(SIZE);
    gate.resolve();
    expect(await using).toEqual(bytes.subarray(0, 4096));
    await destroying;
    expect(() => fstatSync(fd)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('publishes the read it stands for on the request channels', async () => {
    const disk = await openRaw();
    const seen: unknown[] = [];
    const onStart = (m: unknown) => seen.push(['start', m]);
    const onEnd = (m: unknown) => seen.push(['end', m]);
    diagnosticsChannel.subscribe('vd:request:start', onStart);
    diagnosticsChannel.subscribe('vd:request:end', onEnd);
    try {
      await disk.withFileSpans(4096, 100, async () => true);
      expect(seen).toEqual([
        ['start', { disk, op: 'read', offset: 4096, length: 100, zeroCopy: true }],
        ['end', { disk, op: 'read', offset: 4096, length: 100, zeroCopy: true }],
      ]);
    } finally {
      diagnosticsChannel.unsubscribe('vd:request:start', onStart);
      diagnosticsChannel.unsubscribe('vd:request:end', onEnd);
      await disk.close();
    }
  });

  it('passes fn failures through and stays usable', async () => {
    const disk = await openRaw();
    try {
      const boom = new Error('boom');
      await expect(
        disk.withFileSpans(0, 10, async () => {
          throw boom;
        }),
      ).rejects.toBe(boom);
      expect(disk.pending).toBe(0);
      expect(await disk.withFileSpans(0, 10, async (s) => s.length)).toBe(1);
    } finally {
      await disk.close();
    }
  });
});

describe('Disk.writeFileSpans', () => {
  it('checks its arguments like a write does, then answers false where the source cannot write from files', async () => {
    const src = await openRaw();
    const mem = memoryDisk(SIZE);
    const ro = await openRaw(true);
    try {
      await src.withFileSpans(0, 4096, async ([span]) => {
        const s = span!;
        // A local raw file and a disk in memory have no sendfile path: the caller writes from a buffer.
        expect(await mem.writeFileSpans(0, [s])).toBe(false);
        expect(Buffer.from(await mem.read(0, 4096)).every((b) => b === 0)).toBe(true);
        await expect(mem.writeFileSpans(SIZE - 100, [s])).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_OUT_OF_RANGE'));
        await expect(mem.writeFileSpans(0, [])).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_INVALID_ARGUMENT'));
        for (const bad of [
          { ...s, fd: -1 },
          { ...s, position: -4096 },
          { ...s, length: 0 },
          { ...s, length: 1.5 },
        ]) {
          await expect(mem.writeFileSpans(0, [bad])).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_INVALID_ARGUMENT'));
        }
        await expect(ro.writeFileSpans(0, [s])).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_READ_ONLY'));
      });
    } finally {
      await ro.close();
      await mem.close();
      await src.close();
    }
  });
});
