import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FileSpan } from '@vd/core';
import { bytesEqual, check } from '../assert.js';
import type { CaseSpec } from '../define.js';
import { Model } from '../model.js';
import { splitSpan } from '../requirements.js';

const MiB = 1024 * 1024;

export const ioCases: CaseSpec[] = [
  {
    id: 'contract/factory',
    title: 'the factory returns a fresh, open disk whose capabilities are self-consistent',
    requires: [],
    async body({ disk, caps }) {
      check(Number.isSafeInteger(disk.size) && disk.size >= MiB, `size ${disk.size} is at least 1 MiB`);
      check(!disk.closed, 'a new disk is open');
      const { minimum, preferred, maximum } = caps.blockSize;
      check(minimum > 0 && (minimum & (minimum - 1)) === 0, `blockSize.minimum ${minimum} is a power of two`);
      check(preferred % minimum === 0 && maximum % minimum === 0, 'blockSize.preferred and maximum are multiples of the minimum');
      check(maximum >= minimum, 'blockSize.maximum >= minimum');
      check(caps.concurrency.maxInFlight >= 1, 'concurrency.maxInFlight >= 1');
      if (caps.concurrency.model === 'serial') check(caps.concurrency.maxInFlight === 1, 'a serial disk has maxInFlight 1');
      if (caps.readOnly)
        check(caps.zero === 'none' && caps.trim === 'none' && caps.fua === 'none', 'a read-only disk offers no zero, trim or FUA');
      if (caps.fastZero) check(caps.zero === 'native', 'fastZero implies native zero');
      if (caps.trimReadsZero) check(caps.trim === 'native', 'trimReadsZero implies native trim');
      check(
        caps.extents.every((c) => typeof c === 'string' && c.length > 0),
        'extent contexts are non-empty names',
      );
      const info = disk.info();
      check(info.size === disk.size && typeof info.format === 'string', 'info() names a format and the size');
    },
  },
  {
    id: 'read/consistent',
    title: "reading a range whole, in odd pieces or into a caller's buffer gives the same bytes",
    requires: [],
    async body({ disk, window, rng, range }) {
      const whole = await disk.read(0, window);
      for (let at = 0; at < window; ) {
        const { length } = range(at, window, 96 * 1024);
        bytesEqual(await disk.read(at, length), whole.subarray(at, at + length), at, 'piecewise read');
        at += length;
      }
      const into = new Uint8Array(window);
      await disk.readInto(0, into);
      bytesEqual(into, whole, 0, 'readInto');
      for (let i = 0; i < 32; i++) {
        const r = range(0, window, rng.int(1, 8) * 4096);
        bytesEqual(await disk.read(r.offset, r.length), whole.subarray(r.offset, r.offset + r.length), r.offset, 'random read');
      }
    },
  },
  {
    id: 'read/file-spans',
    title:
      'where the disk maps a range to file spans (zero-copy consumers such as sendfile), they cover it and hold the bytes a read returns',
    requires: [],
    async body({ disk, caps, window, rng, range }) {
      // Written ranges first where it can: formats map written data (allocated grains) to files.
      if (!caps.readOnly)
        for (let i = 0; i < 6; i++) {
          const r = range(0, window, rng.int(1, 64) * 4096);
          await disk.write(r.offset, rng.bytes(r.length));
        }
      for (let i = 0; i < 24; i++) {
        const r = i === 0 ? { offset: 0, length: window } : range(0, window, rng.int(1, 128) * 4096);
        let called = false;
        const got = await disk.withFileSpans(r.offset, r.length, async (spans) => {
          called = true;
          check(
            spans.every(
              (s) => Number.isSafeInteger(s.fd) && s.fd >= 0 && Number.isSafeInteger(s.position) && s.position >= 0 && s.length > 0,
            ),
            'each span has a descriptor, a position and a length',
          );
          check(spans.reduce((n, s) => n + s.length, 0) === r.length, `spans for ${r.offset}+${r.length} add up to its length`);
          return readSpans(spans);
        });
        if (got === undefined) {
          check(!called, 'withFileSpans resolves undefined only without calling fn');
          continue;
        }
        bytesEqual(got, await disk.read(r.offset, r.length), r.offset, 'bytes read through the file spans');
      }
    },
  },
  {
    id: 'write/file-spans',
    title:
      'writes from local-file spans (zero-copy producers: sendfile) land as the spans hold, mixed with buffered writes; a disk that cannot write so answers false and changes nothing',
    requires: ['write'],
    async body({ disk, caps, window, rng, range }) {
      const model = await Model.load(disk, 0, window);
      const dir = mkdtempSync(join(tmpdir(), 'vd-conformance-spans-'));
      const content = rng.bytes(2 * MiB);
      const fd = openSync(join(dir, 'spans.bin'), 'w+');
      try {
        writeSync(fd, content, 0, content.length, 0);
        const max = Math.min(caps.blockSize.maximum, window);
        for (let round = 0; round < 8; round++) {
          // Non-overlapping ranges in flight at once: half from file spans, half from buffers.
          const slot = 256 * 1024;
          const slots = Math.max(1, Math.floor(window / slot));
          const picks = [...new Set(Array.from({ length: 6 }, () => rng.int(0, slots - 1)))];
          const writes = picks.map(async (at, k) => {
            const r = range(at * slot, Math.min(window, (at + 1) * slot), Math.min(max, slot));
            if (k % 2 === 1) {
              const data = rng.bytes(r.length);
              model.write(r.offset, data);
              await disk.write(r.offset, data);
              return true;
            }
            // One to three spans from anywhere in the file.
            const cuts = [0, ...[rng.int(0, r.length), rng.int(0, r.length)].sort((a, b) => a - b), r.length];
            const spans = [];
            const bytes = new Uint8Array(r.length);
            for (let i = 0; i + 1 < cuts.length; i++) {
              const length = cuts[i + 1]! - cuts[i]!;
              if (length === 0) continue;
              const position = rng.int(0, content.length - length);
              spans.push({ fd, position, length });
              bytes.set(content.subarray(position, position + length), cuts[i]!);
            }
            const sent = await disk.writeFileSpans(r.offset, spans);
            if (sent) model.write(r.offset, bytes);
            return sent;
          });
          const sent = await Promise.all(writes);
          await model.verify(disk, `after round ${round} of writes from file spans (${sent.filter(Boolean).length} sent so)`);
        }
      } finally {
        closeSync(fd);
        rmSync(dir, { recursive: true, force: true });
      }
    },
  },
  {
    id: 'write/odd-offsets',
    title: 'writes at odd offsets and sizes, straddling 512/4096/64K and preferred-size boundaries, read back as the model says',
    requires: ['write'],
    async body({ disk, window, rng, range, min, caps }) {
      const model = await Model.load(disk, 0, window);
      const boundaries = [512, 4096, 65536, caps.blockSize.preferred, MiB].filter((b) => b % min === 0 && b < window);
      for (let i = 0; i < 150; i++) {
        let r = range(0, window, rng.int(1, 4) === 1 ? 200 * 1024 : 3 * 4096);
        if (i % 3 === 0 && boundaries.length > 0) {
          // Straddle a boundary: start a few blocks before it.
          const b = boundaries[rng.int(0, boundaries.length - 1)]!;
          const before = rng.int(1, 5) * min;
          const after = rng.int(1, 5) * min;
          const offset = Math.max(0, b - before);
          r = { offset, length: Math.min(b + after, window) - offset };
        }
        const data = rng.bytes(r.length);
        await disk.write(r.offset, data);
        model.write(r.offset, data);
        if (i % 10 === 0) {
          const near = range(Math.max(0, r.offset - 8192), Math.min(window, r.offset + r.length + 8192), 64 * 1024);
          await model.verify(disk, `read after write ${i}`, near.offset, near.length);
        }
      }
      await model.verify(disk, 'whole window after 150 writes');
    },
  },
  {
    id: 'write/end-of-disk',
    title: 'writes that end exactly at the last byte read back, and leave the bytes before them intact',
    requires: ['write'],
    async body({ disk, rng, align, min }) {
      const end = align(disk.size);
      const span = Math.min(end, align(256 * 1024));
      const model = await Model.load(disk, end - span, span);
      for (const blocks of [1, 3, 17]) {
        const length = Math.min(span, blocks * min + (min === 1 ? 5 : 0));
        const data = rng.bytes(length);
        await disk.write(end - length, data);
        model.write(end - length, data);
        await model.verify(disk, `tail after writing the last ${length} bytes`);
      }
    },
  },
  {
    id: 'write/block-size-limits',
    title: 'reads and writes larger than blockSize.maximum are split correctly, aligned or straddling maximum-size boundaries',
    requires: ['write', 'split'],
    async body({ disk, rng, min, max, align }) {
      const span = Math.min(align(disk.size), splitSpan(disk));
      const model = await Model.load(disk, 0, span);
      const shapes = [
        { offset: 0, length: max },
        { offset: 0, length: max + min },
        { offset: min, length: 2 * max },
        { offset: max - min, length: 2 * min },
        { offset: 3 * min, length: 2 * max + 5 * min },
      ];
      for (const s of shapes) {
        const data = rng.bytes(s.length);
        await disk.write(s.offset, data);
        model.write(s.offset, data);
        await model.verify(disk, `after a ${s.length}-byte write at ${s.offset}`);
      }
      // One read spanning several maximum-size requests, unaligned to the maximum.
      const r = { offset: 5 * min, length: align(span - 7 * min) };
      model.compare(r.offset, await disk.read(r.offset, r.length), 'a read larger than blockSize.maximum');
    },
  },
];

/** The bytes of `spans`, read through their descriptors as sendfile would (past a file's end: zeroes). */
export function readSpans(spans: readonly FileSpan[]): Uint8Array {
  const out = new Uint8Array(spans.reduce((n, s) => n + s.length, 0));
  let at = 0;
  for (const s of spans) {
    for (let done = 0; done < s.length; ) {
      const n = readSync(s.fd, out, at + done, s.length - done, s.position + done);
      if (n === 0) break;
      done += n;
    }
    at += s.length;
  }
  return out;
}
