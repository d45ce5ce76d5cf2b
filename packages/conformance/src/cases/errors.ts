import type { Disk } from '@vd/core';
import { check, rejectsWith } from '../assert.js';
import type { CaseSpec } from '../define.js';

/** Drains an extents iterator, so its errors surface as a rejection. */
export async function collectExtents(disk: Disk, opts: Parameters<Disk['extents']>[0] = {}) {
  const out = [];
  for await (const e of disk.extents(opts)) out.push(e);
  return out;
}

export const errorCases: CaseSpec[] = [
  {
    id: 'errors/out-of-range',
    title: 'requests reaching past the end fail with ERR_VD_OUT_OF_RANGE and change nothing',
    requires: [],
    async body({ disk, caps, min, align }) {
      const end = align(disk.size);
      const before = await disk.read(end - min, min);
      const past: [number, number][] = [
        [end, min],
        [end - min, 2 * min],
        [0, align(disk.size) + min],
        [align(Number.MAX_SAFE_INTEGER - 4 * min), min],
      ];
      for (const [offset, length] of past) {
        const what = `${offset}+${length} on a ${disk.size}-byte disk`;
        await rejectsWith(() => disk.read(offset, length), 'ERR_VD_OUT_OF_RANGE', `read ${what}`);
        await rejectsWith(() => collectExtents(disk, { offset, length }), 'ERR_VD_OUT_OF_RANGE', `extents ${what}`);
        if (!caps.readOnly) {
          await rejectsWith(() => disk.write(offset, new Uint8Array(length)), 'ERR_VD_OUT_OF_RANGE', `write ${what}`);
          if (caps.zero !== 'none') await rejectsWith(() => disk.zero(offset, length), 'ERR_VD_OUT_OF_RANGE', `zero ${what}`);
          if (caps.trim !== 'none') await rejectsWith(() => disk.trim(offset, length), 'ERR_VD_OUT_OF_RANGE', `trim ${what}`);
        }
      }
      const after = await disk.read(end - min, min);
      check(Buffer.compare(before, after) === 0, 'the last block is unchanged by the refused requests');
    },
  },
  {
    id: 'errors/zero-length',
    title: 'zero-length reads, writes, zeroes and trims fail with ERR_VD_INVALID_ARGUMENT',
    requires: [],
    async body({ disk, caps }) {
      await rejectsWith(() => disk.read(0, 0), 'ERR_VD_INVALID_ARGUMENT', 'read(0, 0)');
      await rejectsWith(() => disk.readInto(0, new Uint8Array(0)), 'ERR_VD_INVALID_ARGUMENT', 'readInto an empty buffer');
      if (!caps.readOnly) {
        await rejectsWith(() => disk.write(0, new Uint8Array(0)), 'ERR_VD_INVALID_ARGUMENT', 'write of no bytes');
        if (caps.zero !== 'none') await rejectsWith(() => disk.zero(0, 0), 'ERR_VD_INVALID_ARGUMENT', 'zero(0, 0)');
        if (caps.trim !== 'none') await rejectsWith(() => disk.trim(0, 0), 'ERR_VD_INVALID_ARGUMENT', 'trim(0, 0)');
      }
    },
  },
  {
    id: 'errors/invalid-arguments',
    title: 'negative, fractional, non-finite and non-number offsets and lengths fail with ERR_VD_INVALID_ARGUMENT',
    requires: [],
    async body({ disk, caps, min }) {
      const bad: unknown[] = [
        -1,
        -min,
        0.5,
        min + 0.5,
        Number.NaN,
        Number.POSITIVE_INFINITY,
        Number.MAX_SAFE_INTEGER + 1,
        '0',
        null,
        undefined,
        1n,
      ];
      for (const v of bad) {
        const what = `${typeof v === 'bigint' ? `${v}n` : (JSON.stringify(v) ?? String(v))}`;
        const n = v as number;
        await rejectsWith(() => disk.read(n, min), 'ERR_VD_INVALID_ARGUMENT', `read at offset ${what}`);
        await rejectsWith(() => disk.read(0, n), 'ERR_VD_INVALID_ARGUMENT', `read of length ${what}`);
        if (v !== undefined && v !== null) {
          // An omitted (nullish) offset means "from the start" for extents.
          await rejectsWith(() => collectExtents(disk, { offset: n, length: min }), 'ERR_VD_INVALID_ARGUMENT', `extents at ${what}`);
        }
        if (!caps.readOnly) {
          await rejectsWith(() => disk.write(n, new Uint8Array(min)), 'ERR_VD_INVALID_ARGUMENT', `write at offset ${what}`);
          if (caps.zero !== 'none') {
            await rejectsWith(() => disk.zero(n, min), 'ERR_VD_INVALID_ARGUMENT', `zero at offset ${what}`);
            await rejectsWith(() => disk.zero(0, n), 'ERR_VD_INVALID_ARGUMENT', `zero of length ${what}`);
          }
          if (caps.trim !== 'none') await rejectsWith(() => disk.trim(n, min), 'ERR_VD_INVALID_ARGUMENT', `trim at offset ${what}`);
        }
      }
      const notBytes = [[1, 2, 3], 'abc', new ArrayBuffer(min)] as unknown as Uint8Array[];
      for (const b of notBytes) {
        await rejectsWith(() => disk.readInto(0, b), 'ERR_VD_INVALID_ARGUMENT', 'readInto a non-Uint8Array');
        if (!caps.readOnly) await rejectsWith(() => disk.write(0, b), 'ERR_VD_INVALID_ARGUMENT', 'write of a non-Uint8Array');
      }
    },
  },
  {
    id: 'errors/alignment',
    title: 'requests not aligned to blockSize.minimum fail with ERR_VD_ALIGNMENT and change nothing',
    requires: ['alignment'],
    async body({ disk, caps, min }) {
      const before = await disk.read(0, 4 * min);
      const unaligned: [number, number][] = [
        [1, min],
        [min / 2, min],
        [0, min + 1],
        [0, min - 1],
        [min, min + min / 2],
      ];
      for (const [offset, length] of unaligned) {
        const what = `${offset}+${length} with blockSize.minimum ${min}`;
        await rejectsWith(() => disk.read(offset, length), 'ERR_VD_ALIGNMENT', `read ${what}`);
        await rejectsWith(() => collectExtents(disk, { offset, length }), 'ERR_VD_ALIGNMENT', `extents ${what}`);
        if (!caps.readOnly) {
          await rejectsWith(() => disk.write(offset, new Uint8Array(length).fill(0xa5)), 'ERR_VD_ALIGNMENT', `write ${what}`);
          if (caps.zero !== 'none') await rejectsWith(() => disk.zero(offset, length), 'ERR_VD_ALIGNMENT', `zero ${what}`);
          if (caps.trim !== 'none') await rejectsWith(() => disk.trim(offset, length), 'ERR_VD_ALIGNMENT', `trim ${what}`);
        }
      }
      check(Buffer.compare(before, await disk.read(0, 4 * min)) === 0, 'the first blocks are unchanged by the refused requests');
    },
  },
  {
    id: 'read-only/refuses-changes',
    title: 'a read-only disk refuses write, zero and trim with ERR_VD_READ_ONLY, still reads, flushes and lists extents',
    requires: ['read-only'],
    async body({ disk, caps, min, window }) {
      check(caps.zero === 'none' && caps.trim === 'none' && caps.fua === 'none', 'a read-only disk declares no zero, trim or FUA');
      const before = await disk.read(0, window);
      await rejectsWith(() => disk.write(0, new Uint8Array(min).fill(1)), 'ERR_VD_READ_ONLY', 'write');
      await rejectsWith(() => disk.write(min, new Uint8Array(min).fill(1), { fua: true }), 'ERR_VD_READ_ONLY', 'FUA write');
      await rejectsWith(() => disk.zero(0, min), 'ERR_VD_READ_ONLY', 'zero');
      await rejectsWith(() => disk.zero(0, min, { noHole: true }), 'ERR_VD_READ_ONLY', 'zero with noHole');
      await rejectsWith(() => disk.trim(0, min), 'ERR_VD_READ_ONLY', 'trim');
      await disk.flush();
      check(Buffer.compare(before, await disk.read(0, window)) === 0, 'the data is unchanged');
      const extents = await collectExtents(disk);
      check(extents.length > 0 && extents.at(-1)!.offset + extents.at(-1)!.length === disk.size, 'extents reach the end of the disk');
    },
  },
];
