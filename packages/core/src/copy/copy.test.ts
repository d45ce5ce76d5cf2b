import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Disk } from '../disk.js';
import { isVdError, VdError } from '../errors.js';
import { MemorySource, memoryDisk } from '../memory.js';
import type { BlockSource, Capabilities, Extent, IoOptions, WriteOptions, ZeroOptions } from '../spec.js';
import { copyDisk } from './copy.js';
import type { CopyProgress } from './options.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Hooks {
  extents?: (offset: number, length: number) => void;
  read?: (offset: number, length: number) => void | Promise<void>;
  write?: (offset: number, data: Uint8Array) => Uint8Array | undefined | Promise<Uint8Array | undefined>;
  zero?: (offset: number, length: number, opts: ZeroOptions) => void;
}

/** A memory source seen through hooks: counts, delays or corrupts requests on their way. */
class Tap implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly calls = { read: 0, write: 0, zero: 0 };
  /** Requests at the source right now, and the most there ever were. */
  active = 0;
  maxActive = 0;

  constructor(
    readonly inner: MemorySource,
    readonly hooks: Hooks = {},
    capabilities: Partial<Capabilities> = {},
  ) {
    this.size = inner.size;
    this.capabilities = { ...inner.capabilities, ...capabilities };
  }

  async #track<T>(run: () => Promise<T>): Promise<T> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      return await run();
    } finally {
      this.active--;
    }
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.#track(async () => {
      this.calls.read++;
      await this.hooks.read?.(offset, into.length);
      await this.inner._read(offset, into, opts);
    });
  }

  _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    return this.#track(async () => {
      this.calls.write++;
      const replaced = await this.hooks.write?.(offset, data);
      await this.inner._write(offset, replaced ?? data);
    });
  }

  _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.#track(async () => {
      this.calls.zero++;
      this.hooks.zero?.(offset, length, opts);
      await this.inner._zero(offset, length, opts);
    });
  }

  _trim(offset: number, length: number): Promise<void> {
    return this.inner._trim(offset, length);
  }

  _flush(): Promise<void> {
    return this.inner._flush();
  }

  async _extents(offset: number, length: number): Promise<Extent[]> {
    this.hooks.extents?.(offset, length);
    // One extent per answer, as a server with a small reply limit would: the caller must ask again.
    return (await this.inner._extents(offset, length)).slice(0, 1);
  }

  _close(): Promise<void> {
    return this.inner._close();
  }
}

/** Deterministic non-zero-ish bytes. */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

async function allExtents(disk: Disk): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of disk.extents()) out.push(e);
  return out;
}

/** Byte equality that names the first difference (vitest's deep equality is slow on megabytes). */
function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  if (Buffer.compare(actual, expected) === 0) return;
  const at = actual.findIndex((b, i) => b !== expected[i]);
  expect.fail(`bytes differ first at ${at}: ${actual[at]} !== ${expected[at]}`);
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('copyDisk', () => {
  it('copies a memory disk to an identical one', async () => {
    const size = 5 * MiB + 12 * KiB;
    const source = memoryDisk(size, { data: pattern(size, 7) });
    const target = memoryDisk(size);
    const result = await copyDisk(source, target);
    expectBytes(await target.read(0, size), await source.read(0, size));
    expect(result.bytesRead).toBe(size);
    expect(result.bytesWritten).toBe(size);
    expect(result.verified).toBe(false);
  });

  it('keeps holes as holes on a target that reads zero, and reads nothing there', async () => {
    const size = 16 * MiB;
    const source = memoryDisk(size);
    await source.write(1 * MiB, pattern(64 * KiB, 1));
    await source.write(9 * MiB + 4 * KiB, pattern(8 * KiB, 2));
    const target = memoryDisk(size);
    const result = await copyDisk(source, target, { targetIsZero: true });
    expect(result.bytesRead).toBe(72 * KiB);
    expect(result.bytesWritten).toBe(72 * KiB);
    expect(result.bytesSkipped).toBe(size - 72 * KiB);
    expect(await allExtents(target)).toEqual(await allExtents(source));
    expectBytes(await target.read(0, size), await source.read(0, size));
  });

  it('zeroes holes on a target that holds old data, leaving holes there too', async () => {
    const size = 4 * MiB;
    const source = memoryDisk(size);
    await source.write(2 * MiB, pattern(4 * KiB, 3));
    const target = memoryDisk(size, { data: pattern(size, 4) });
    const result = await copyDisk(source, target);
    expect(result.bytesZeroed).toBe(size - 4 * KiB);
    expectBytes(await target.read(0, size), await source.read(0, size));
    const types = new Set((await allExtents(target)).map((e) => e.type));
    expect(types).toEqual(new Set(['hole', 'data']));
  });

  it('asks a target whether it reads zero when not told', async () => {
    const size = 4 * MiB;
    const source = memoryDisk(size);
    await source.write(1 * MiB, pattern(4 * KiB, 30));
    const fresh = await copyDisk(source, memoryDisk(size));
    expect(fresh.bytesSkipped).toBe(size - 4 * KiB);
    expect(fresh.bytesZeroed).toBe(0);
    const told = await copyDisk(source, memoryDisk(size), { targetIsZero: false });
    expect(told.bytesZeroed).toBe(size - 4 * KiB);
    const used = memoryDisk(size);
    await used.write(3 * MiB, new Uint8Array([1]));
    const dirty = await copyDisk(source, used);
    expect(dirty.bytesZeroed).toBe(size - 4 * KiB);
    expectBytes(await used.read(0, size), await source.read(0, size));
  });

  it('keeps zeroed ranges allocated when sparse is false', async () => {
    const size = 1 * MiB;
    const source = memoryDisk(size);
    await source.write(0, pattern(4 * KiB, 31));
    const target = memoryDisk(size, { data: pattern(size, 32) });
    await copyDisk(source, target, { sparse: false });
    expect(new Set((await allExtents(target)).map((e) => e.type))).toEqual(new Set(['data', 'zero']));
    expectBytes(await target.read(0, size), await source.read(0, size));
  });

  it('never writes all-zero chunks as data', async () => {
    const size = 8 * MiB;
    const inner = new MemorySource(size);
    // Allocated, but zero: the source reports data and the copy must notice the zeroes itself.
    await inner._write(0, new Uint8Array(4 * MiB));
    await inner._write(6 * MiB, pattern(4 * KiB, 5));
    const target = new Tap(new MemorySource(size));
    const result = await copyDisk(new Disk(inner), new Disk(target), { targetIsZero: true, chunkSize: 1 * MiB });
    expect(result.bytesRead).toBe(4 * MiB + 4 * KiB);
    expect(result.bytesWritten).toBe(4 * KiB);
    expect(target.calls.write).toBe(1);
    expect(target.inner.allocatedBytes).toBe(4 * KiB);

    // On a target with old contents the zero chunks become zero requests, not writes of zeroes.
    const dirty = new Tap(new MemorySource(size, { data: pattern(size, 6) }));
    const again = await copyDisk(new Disk(inner), new Disk(dirty), { chunkSize: 1 * MiB });
    expect(again.bytesWritten).toBe(4 * KiB);
    expect(dirty.calls.write).toBe(1);
    expect(again.bytesZeroed).toBe(size - 4 * KiB);
    expectBytes(await new Disk(dirty).read(0, size), await new Disk(inner).read(0, size));
  });

  it('leaves zero blocks inside data chunks out of a target that reads zero', async () => {
    const size = 2 * MiB;
    const inner = new MemorySource(size);
    const chunk = new Uint8Array(1 * MiB);
    chunk.set(pattern(4 * KiB, 21), 0);
    chunk.set(pattern(8 * KiB, 22), 512 * KiB);
    await inner._write(0, chunk); // one data extent, mostly zero
    const target = new Tap(new MemorySource(size));
    const result = await copyDisk(new Disk(inner), new Disk(target), { targetIsZero: true, chunkSize: 1 * MiB });
    expect(result.bytesWritten).toBe(12 * KiB);
    expect(result.bytesSkipped).toBe(size - 12 * KiB);
    expect(target.calls.write).toBe(2);
    expect(target.inner.allocatedBytes).toBe(12 * KiB);
    expectBytes(await new Disk(target).read(0, size), await new Disk(inner).read(0, size));

    const whole = new Tap(new MemorySource(size));
    const plain = await copyDisk(new Disk(inner), new Disk(whole), { targetIsZero: true, chunkSize: 1 * MiB, sparseBlock: 0 });
    expect(plain.bytesWritten).toBe(1 * MiB);
    expect(whole.calls.write).toBe(1);
  });

  it('falls back to a plain zero when a fast zero is refused', async () => {
    const size = 4 * MiB;
    const source = memoryDisk(size);
    await source.write(0, pattern(4 * KiB, 23));
    await source.write(3 * MiB, pattern(4 * KiB, 24));
    const fastTries: number[] = [];
    const target = new Tap(
      new MemorySource(size, { data: pattern(size, 25) }),
      {
        zero: (offset, _length, opts) => {
          if (!opts.fast) return;
          fastTries.push(offset);
          throw new VdError('ERR_VD_NOT_SUPPORTED', 'no fast zero here');
        },
      },
      { fastZero: true },
    );
    const result = await copyDisk(source, new Disk(target), { inFlight: 1 });
    expect(result.bytesZeroed).toBe(size - 8 * KiB);
    expect(fastTries).toEqual([4 * KiB]); // asked once, then never again
    expectBytes(await new Disk(target).read(0, size), await source.read(0, size));
  });

  it('asks the source for allocation as it goes, not all up front', async () => {
    const size = 4 * MiB;
    const inner = new MemorySource(size);
    for (let at = 0; at < size; at += 128 * KiB) await inner._write(at, pattern(4 * KiB, at + 1));
    let extentsCalls = 0;
    let callsAtFirstWrite = -1;
    const source = new Tap(inner, { extents: () => void extentsCalls++ });
    const target = new Tap(new MemorySource(size), {
      write: () => {
        if (callsAtFirstWrite < 0) callsAtFirstWrite = extentsCalls;
        return undefined;
      },
    });
    await copyDisk(new Disk(source), new Disk(target), { inFlight: 2, targetIsZero: true });
    expect(extentsCalls).toBeGreaterThanOrEqual(64); // 32 data + 32 hole extents, one per answer
    expect(callsAtFirstWrite).toBeGreaterThan(0);
    expect(callsAtFirstWrite).toBeLessThanOrEqual(8);
    expect(target.calls.write).toBe(32);
  });

  it('reads a fragmented chunk in one request, keeping its holes out of a zero target', async () => {
    const size = 2 * MiB;
    const inner = new MemorySource(size);
    for (let at = 0; at < 1 * MiB; at += 16 * KiB) await inner._write(at, pattern(4 * KiB, at + 7));
    const source = new Tap(inner);
    const target = new Tap(new MemorySource(size));
    const result = await copyDisk(new Disk(source), new Disk(target), { targetIsZero: true, chunkSize: 1 * MiB, verify: true });
    expect(source.calls.read).toBe(1); // 64 data extents, one chunk
    expect(result.bytesWritten).toBe(256 * KiB);
    expect(target.calls.write).toBe(64);
    expect(target.inner.allocatedBytes).toBe(256 * KiB);
    expectBytes(await new Disk(target).read(0, size), await new Disk(inner).read(0, size));

    // A dirty target gets each extent on its own, and zero requests for the holes between them.
    const dirty = new Tap(new MemorySource(size, { data: pattern(size, 29) }));
    await copyDisk(new Disk(source), new Disk(dirty), { chunkSize: 1 * MiB });
    expect(dirty.calls.write).toBe(64);
    expectBytes(await new Disk(dirty).read(0, size), await new Disk(inner).read(0, size));
  });

  it('writes zeroes where the target cannot zero natively', async () => {
    const size = 2 * MiB;
    const source = memoryDisk(size);
    await source.write(0, pattern(4 * KiB, 8));
    const inner = new MemorySource(size, { data: pattern(size, 9), capabilities: { zero: 'emulate', fastZero: false } });
    const target = new Disk(inner);
    const result = await copyDisk(source, target);
    expect(result.bytesZeroed).toBe(size - 4 * KiB);
    expectBytes(await target.read(0, size), await source.read(0, size));
  });

  it('copies only the given ranges, intersected with allocation', async () => {
    const size = 8 * MiB;
    const source = memoryDisk(size, { data: pattern(size, 10) });
    await source.zero(1 * MiB, 64 * KiB); // a hole inside the first range
    const old = pattern(size, 11);
    const target = memoryDisk(size, { data: old });
    const ranges = [
      { offset: 512 * KiB, length: 1 * MiB },
      { offset: 4 * MiB, length: 128 * KiB },
    ];
    const result = await copyDisk(source, target, { extents: ranges });
    expect(result.bytesRead + result.bytesZeroed).toBe(1 * MiB + 128 * KiB);
    expect(result.bytesZeroed).toBe(64 * KiB);
    const expected = old.slice();
    const src = await source.read(0, size);
    for (const r of ranges) expected.set(src.subarray(r.offset, r.offset + r.length), r.offset);
    expectBytes(await target.read(0, size), expected);
  });

  it('takes ranges from an async iterable lazily and counts them into bytesTotal', async () => {
    const size = 4 * MiB;
    const source = memoryDisk(size, { data: pattern(size, 12) });
    const target = memoryDisk(size);
    async function* ranges() {
      yield { offset: 0, length: 64 * KiB };
      yield { offset: 64 * KiB, length: 64 * KiB }; // touching: merged
      yield { offset: 3 * MiB, length: 0 }; // empty: ignored
      yield { offset: 3 * MiB, length: 4 * KiB };
    }
    const events: CopyProgress[] = [];
    await copyDisk(source, target, { extents: ranges(), onProgress: (p) => events.push(p), progressInterval: 0 });
    expect(events.at(-1)?.bytesTotal).toBe(132 * KiB);
    expect(events.at(-1)?.bytesDone).toBe(132 * KiB);
    expectBytes(await target.read(3 * MiB, 4 * KiB), await source.read(3 * MiB, 4 * KiB));
    expectBytes(await target.read(128 * KiB, 4 * KiB), new Uint8Array(4 * KiB));
  });

  it('refuses unsorted, overlapping, unaligned and out-of-range extents with codes', async () => {
    const size = 1 * MiB;
    const source = new Disk(
      new MemorySource(size, { capabilities: { blockSize: { minimum: 512, preferred: 64 * KiB, maximum: 1 * MiB } } }),
    );
    const target = memoryDisk(size);
    const cases: [Array<{ offset: number; length: number }>, string][] = [
      [
        [
          { offset: 8192, length: 512 },
          { offset: 0, length: 512 },
        ],
        'ERR_VD_INVALID_ARGUMENT',
      ],
      [
        [
          { offset: 0, length: 1024 },
          { offset: 512, length: 512 },
        ],
        'ERR_VD_INVALID_ARGUMENT',
      ],
      [[{ offset: 100, length: 512 }], 'ERR_VD_ALIGNMENT'],
      [[{ offset: size - 512, length: 1024 }], 'ERR_VD_OUT_OF_RANGE'],
      [[{ offset: -512, length: 512 }], 'ERR_VD_INVALID_ARGUMENT'],
    ];
    for (const [extents, code] of cases) {
      await expect(copyDisk(source, target, { extents })).rejects.toMatchObject({ code });
    }
    async function* late() {
      yield { offset: 4096, length: 512 };
      yield { offset: 0, length: 512 };
    }
    await expect(copyDisk(source, target, { extents: late() })).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
      details: { index: 1 },
    });
    expect(source.pending).toBe(0);
    expect(target.pending).toBe(0);
  });

  it('copies an empty disk', async () => {
    const result = await copyDisk(memoryDisk(0), memoryDisk(0), { verify: true, checksums: true });
    expect(result).toMatchObject({ bytesRead: 0, bytesWritten: 0, bytesZeroed: 0, bytesSkipped: 0, verified: true, checksums: [] });
  });

  it('refuses a smaller or read-only target', async () => {
    const source = memoryDisk(2 * MiB);
    await expect(copyDisk(source, memoryDisk(1 * MiB))).rejects.toSatisfy(
      (e) => isVdError(e, 'ERR_VD_OUT_OF_RANGE') && /larger|at least/.test((e as Error).message),
    );
    await expect(copyDisk(source, memoryDisk(2 * MiB, { readOnly: true }))).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
  });

  it('stops on abort, and what was still in flight settles by close', async () => {
    const size = 16 * MiB;
    const controller = new AbortController();
    const tap = new Tap(new MemorySource(size, { data: pattern(size, 13) }), {
      read: async () => {
        await tick();
        if (tap.calls.read >= 3) controller.abort(new Error('user'));
      },
    });
    const source = new Disk(tap);
    const target = memoryDisk(size);
    const err = await copyDisk(source, target, { signal: controller.signal, chunkSize: 256 * KiB, inFlight: 4 }).catch((e) => e);
    expect(err).toMatchObject({ code: 'ERR_VD_ABORTED' });
    await Promise.all([source.close(), target.close()]);
    expect(source.pending).toBe(0);
    expect(target.pending).toBe(0);
    expect(tap.active).toBe(0);
    expect(tap.calls.read).toBeLessThan(size / (256 * KiB));
  });

  it('an abort does not wait for reads stuck at the source, and reports the partial copy', async () => {
    const size = 8 * MiB;
    const chunk = 512 * KiB;
    const controller = new AbortController();
    let release = () => {};
    const stuck = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The first 2 MiB read at once; every later read waits until released, as on a stalled server.
    // The fourth of those (every worker waiting) aborts the copy.
    let waiting = 0;
    const tap = new Tap(new MemorySource(size, { data: pattern(size, 41) }), {
      read: async (offset) => {
        if (offset < 2 * MiB) return;
        if (++waiting === 4) controller.abort(new Error('stop now'));
        await stuck;
      },
    });
    const source = new Disk(tap);
    const target = memoryDisk(size);
    try {
      const copy = copyDisk(source, target, { signal: controller.signal, chunkSize: chunk, inFlight: 4, targetIsZero: true });
      // A copy that waited for its reads would never settle while they are held: fail instead of hanging.
      let hang: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<string>((resolve) => {
        hang = setTimeout(() => resolve('the copy waited for the stuck reads'), 20_000);
      });
      const outcome = await Promise.race([
        copy.then(
          () => 'resolved',
          (e: unknown) => e,
        ),
        stalled,
      ]);
      clearTimeout(hang);
      expect(outcome).toMatchObject({ code: 'ERR_VD_ABORTED' });
      const err = outcome as VdError;
      expect((err.cause as Error).message).toBe('stop now');
      // The reads are still at the source: the copy did not wait for them.
      expect(tap.active).toBe(4);
      // Every chunk below 2 MiB finished before a worker took a stuck one.
      expect(err.details).toMatchObject({ partial: true, bytesDone: 2 * MiB, bytesWritten: 2 * MiB, bytesTotal: size, unsettled: [] });
      expect(err.message).toMatch(/partial copy/);
      expectBytes(await target.read(0, 2 * MiB), await source.read(0, 2 * MiB));
      expectBytes(await target.read(2 * MiB, size - 2 * MiB), new Uint8Array(size - 2 * MiB));
    } finally {
      release();
    }
    await source.close();
    expect(tap.active).toBe(0);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const source = memoryDisk(1 * MiB);
    await expect(copyDisk(source, memoryDisk(1 * MiB), { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
  });

  it('fails fast with the failing offset and drains the rest', async () => {
    const size = 8 * MiB;
    const tap = new Tap(new MemorySource(size, { data: pattern(size, 14) }), {
      read: async (offset) => {
        await tick();
        if (offset === 3 * MiB) throw new Error('bad sector');
      },
    });
    const source = new Disk(tap);
    const target = memoryDisk(size);
    const err = await copyDisk(source, target, { chunkSize: 1 * MiB, inFlight: 2 }).catch((e) => e);
    expect(err).toMatchObject({ code: 'ERR_VD_IO', details: { offset: 3 * MiB, op: 'read' } });
    expect(source.pending).toBe(0);
    expect(target.pending).toBe(0);
    expect(tap.calls.read).toBeLessThan(8);
  });

  it('verifies the target and catches one flipped bit', async () => {
    const size = 4 * MiB;
    const source = memoryDisk(size, { data: pattern(size, 15) });
    const good = await copyDisk(source, memoryDisk(size), { verify: true, chunkSize: 512 * KiB });
    expect(good.verified).toBe(true);

    const corrupt = new Tap(new MemorySource(size), {
      write: (offset, data) => {
        const at = 2 * MiB + 777 - offset;
        if (at < 0 || at >= data.length) return undefined;
        const copy = data.slice();
        copy[at] = (copy[at] ?? 0) ^ 0x10;
        return copy;
      },
    });
    const err = await copyDisk(source, new Disk(corrupt), { verify: true, chunkSize: 512 * KiB }).catch((e) => e);
    expect(err).toMatchObject({ code: 'ERR_VD_VERIFY', details: { offset: 2 * MiB } });
  });

  it('verifies that ranges assumed zero really read zero', async () => {
    const size = 2 * MiB;
    const source = memoryDisk(size);
    await source.write(0, pattern(4 * KiB, 16));
    // The caller claims the target is zero, but it is not.
    const target = memoryDisk(size);
    await target.write(1 * MiB + 5, new Uint8Array([1]));
    const err = await copyDisk(source, target, { targetIsZero: true, verify: true }).catch((e) => e);
    expect(err).toMatchObject({ code: 'ERR_VD_VERIFY', details: { offset: 1 * MiB + 5 } });
  });

  it('returns per-chunk checksums on the chunk grid', async () => {
    const { createHash } = await import('node:crypto');
    const size = 3 * MiB;
    const data = pattern(size, 17);
    const source = memoryDisk(size, { data });
    await source.zero(1 * MiB, 1 * MiB);
    const result = await copyDisk(source, memoryDisk(size), { checksums: true, chunkSize: 512 * KiB });
    expect(result.checksums?.map((c) => c.offset)).toEqual([0, 512 * KiB, 2 * MiB, 2.5 * MiB]);
    for (const c of result.checksums ?? []) {
      expect(c.sha256).toBe(
        createHash('sha256')
          .update(data.subarray(c.offset, c.offset + c.length))
          .digest('hex'),
      );
    }
  });

  it('reports progress monotonically, ending at the total', async () => {
    const size = 8 * MiB;
    const source = memoryDisk(size, { data: pattern(size, 18) });
    await source.zero(2 * MiB, 2 * MiB);
    const events: CopyProgress[] = [];
    await copyDisk(source, memoryDisk(size), { chunkSize: 256 * KiB, progressInterval: 0, onProgress: (p) => events.push(p) });
    expect(events.length).toBeGreaterThan(2);
    for (let i = 1; i < events.length; i++) {
      const [a, b] = [events[i - 1]!, events[i]!];
      expect(b.bytesDone).toBeGreaterThanOrEqual(a.bytesDone);
      expect(b.bytesRead).toBeGreaterThanOrEqual(a.bytesRead);
      expect(b.bytesWritten).toBeGreaterThanOrEqual(a.bytesWritten);
    }
    const last = events.at(-1)!;
    expect(last.bytesTotal).toBe(size);
    expect(last.bytesDone).toBe(size);
    expect(last.bytesWritten + last.bytesZeroed + last.bytesSkipped).toBe(size);
  });

  it('never has more than inFlight requests outstanding', async () => {
    const size = 8 * MiB;
    const caps = { concurrency: { model: 'parallel' as const, maxInFlight: 64 } };
    const src = new Tap(new MemorySource(size, { data: pattern(size, 19) }), { read: tick }, caps);
    const dst = new Tap(new MemorySource(size), { write: async () => void (await tick()) }, caps);
    let active = 0;
    let max = 0;
    const both = (tap: Tap) => {
      const read = tap._read.bind(tap);
      const write = tap._write.bind(tap);
      const count = async <T>(p: () => Promise<T>) => {
        active++;
        max = Math.max(max, active);
        try {
          return await p();
        } finally {
          active--;
        }
      };
      tap._read = (o, i, opts) => count(() => read(o, i, opts));
      tap._write = (o, d, opts) => count(() => write(o, d, opts));
    };
    both(src);
    both(dst);
    await copyDisk(new Disk(src), new Disk(dst), { inFlight: 5, chunkSize: 128 * KiB });
    expect(max).toBeLessThanOrEqual(5);
    expect(max).toBeGreaterThan(1);
    expectBytes(await new Disk(dst).read(0, size), await new Disk(src).read(0, size));
  });

  it('widens data to the block size of a target with a larger minimum', async () => {
    const size = 1 * MiB;
    const fine = { blockSize: { minimum: 512, preferred: 64 * KiB, maximum: 1 * MiB } };
    const coarse = { blockSize: { minimum: 4096, preferred: 64 * KiB, maximum: 1 * MiB } };
    const source = new Disk(new MemorySource(size, { granularity: 512, capabilities: fine }));
    await source.write(512, pattern(512, 26)); // data at 512..1024, holes around it
    await source.write(9 * 512, pattern(1024, 27)); // 4608..5632 straddles a 4 KiB boundary
    const dst = new Tap(new MemorySource(size, { data: pattern(size, 28) }), {}, coarse);
    const seen: Array<[number, number]> = [];
    dst.hooks.write = (offset, data) => {
      seen.push([offset, data.length]);
      return undefined;
    };
    await copyDisk(source, new Disk(dst), { verify: true });
    for (const [offset, length] of seen) expect([offset % 4096, length % 4096]).toEqual([0, 0]);
    expectBytes(await new Disk(dst).read(0, size), await source.read(0, size));
  });

  it('chooses a chunk size both disks accept', async () => {
    const src = new Disk(
      new MemorySource(4 * MiB, { capabilities: { blockSize: { minimum: 512, preferred: 192 * KiB, maximum: 1 * MiB } } }),
    );
    const dst = new Disk(
      new MemorySource(4 * MiB, { capabilities: { blockSize: { minimum: 4096, preferred: 128 * KiB, maximum: 4 * MiB } } }),
    );
    const seen: number[] = [];
    const tap = new Tap(
      new MemorySource(4 * MiB, { data: pattern(4 * MiB, 20) }),
      { read: (_o, n) => void seen.push(n) },
      src.capabilities,
    );
    await copyDisk(new Disk(tap), dst);
    // lcm(192 KiB, 128 KiB) = 384 KiB; two of them fit the 1 MiB maximum.
    expect(Math.max(...seen)).toBe(768 * KiB);
    await expect(copyDisk(src, dst, { chunkSize: 1000 })).rejects.toMatchObject({ code: 'ERR_VD_ALIGNMENT' });
  });

  it('property: the target reads as the source after random writes and zeroes', async () => {
    const size = 1 * MiB;
    const op = fc.record({
      offset: fc.integer({ min: 0, max: size - 1 }),
      length: fc.integer({ min: 1, max: 200 * KiB }),
      zero: fc.boolean(),
      seed: fc.integer({ min: 1, max: 1 << 30 }),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 12 }),
        fc.constantFrom(4 * KiB, 64 * KiB, 256 * KiB),
        fc.boolean(),
        fc.array(fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 300 * KiB }) }), {
          maxLength: 4,
        }),
        async (ops, chunkSize, dirtyTarget, probes) => {
          const source = memoryDisk(size);
          for (const o of ops) {
            const length = Math.min(o.length, size - o.offset);
            if (o.zero) await source.zero(o.offset, length);
            else await source.write(o.offset, pattern(length, o.seed));
          }
          const target = memoryDisk(size, dirtyTarget ? { data: pattern(size, 99) } : {});
          const result = await copyDisk(source, target, { chunkSize, targetIsZero: !dirtyTarget, verify: true, inFlight: 3 });
          expect(result.verified).toBe(true);
          expect(result.bytesWritten + result.bytesZeroed + result.bytesSkipped).toBe(size);
          for (const p of probes) {
            const length = Math.min(p.length, size - p.offset);
            expectBytes(await target.read(p.offset, length), await source.read(p.offset, length));
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});
