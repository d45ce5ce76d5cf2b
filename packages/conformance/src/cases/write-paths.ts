import { allZero, check, rejectsWith } from '../assert.js';
import type { CaseSpec } from '../define.js';
import { Model } from '../model.js';
import { collectExtents } from './errors.js';

export const writePathCases: CaseSpec[] = [
  {
    id: 'flush/persists',
    title: 'flush succeeds with and without pending writes, FUA writes succeed, and the data reads back',
    requires: ['write'],
    async body({ disk, window, rng, range }) {
      const model = await Model.load(disk, 0, window);
      await disk.flush();
      for (let i = 0; i < 20; i++) {
        const r = range(0, window, 64 * 1024);
        const data = rng.bytes(r.length);
        await disk.write(r.offset, data, { fua: i % 2 === 0 });
        model.write(r.offset, data);
        if (i % 5 === 4) await disk.flush();
      }
      await disk.flush();
      await disk.flush();
      await model.verify(disk, 'after writes, FUA writes and flushes');
    },
  },
  {
    id: 'fua/write-zero-trim',
    title: 'FUA on write, zero and trim succeeds and the data reads back',
    requires: ['fua'],
    async body({ disk, caps, window, rng, range }) {
      const model = await Model.load(disk, 0, window);
      const data = rng.bytes(window, { nonZero: true });
      await disk.write(0, data, { fua: true });
      model.write(0, data);
      await model.verify(disk, 'after a FUA write');
      if (caps.zero !== 'none') {
        const r = range(0, window, 128 * 1024);
        await disk.zero(r.offset, r.length, { fua: true });
        model.zero(r.offset, r.length);
        await model.verify(disk, 'after a FUA zero');
      }
      if (caps.trim !== 'none') {
        const r = range(0, window, 128 * 1024);
        await disk.trim(r.offset, r.length, { fua: true });
        if (caps.trimReadsZero) model.zero(r.offset, r.length);
        else model.forget(r.offset, r.length);
        await model.verify(disk, 'after a FUA trim');
      }
    },
  },
  {
    id: 'zero/reads-zero',
    title: 'zeroed ranges read back as zeroes and their neighbours are intact, including ranges larger than blockSize.maximum',
    requires: ['write', 'zero'],
    async body({ disk, window, rng, range, min, max, align }) {
      const model = await Model.load(disk, 0, window);
      const data = rng.bytes(window, { nonZero: true });
      await disk.write(0, data);
      model.write(0, data);
      for (let i = 0; i < 24; i++) {
        const r = range(0, window, i % 4 === 0 ? 512 * 1024 : 3 * 4096);
        await disk.zero(r.offset, r.length);
        model.zero(r.offset, r.length);
        await model.verify(
          disk,
          `after zero ${r.offset}+${r.length}`,
          Math.max(0, r.offset - min),
          Math.min(window, r.offset + r.length + min) - Math.max(0, r.offset - min),
        );
        if (i % 6 === 5) {
          const fill = rng.bytes(window, { nonZero: true });
          await disk.write(0, fill);
          model.write(0, fill);
        }
      }
      // Larger than blockSize.maximum when the window allows it, straddling its boundary.
      const big = align(Math.min(window - min, max + 2 * min));
      await disk.zero(min, big);
      model.zero(min, big);
      await model.verify(disk, 'after zeroing across blockSize.maximum');
    },
  },
  {
    id: 'zero/no-hole',
    title: 'zero with noHole reads back as zeroes and the range is not reported as a hole',
    requires: ['write', 'zero'],
    async body({ disk, window, rng, range }) {
      const model = await Model.load(disk, 0, window);
      const data = rng.bytes(window, { nonZero: true });
      await disk.write(0, data);
      model.write(0, data);
      for (let i = 0; i < 8; i++) {
        const r = range(0, window, 256 * 1024);
        await disk.zero(r.offset, r.length, { noHole: true });
        model.zero(r.offset, r.length);
        allZero(await disk.read(r.offset, r.length), r.offset, 'a range zeroed with noHole');
        for (const e of await collectExtents(disk, r)) {
          check(e.type !== 'hole', `extent ${e.offset}+${e.length} zeroed with noHole (after a write) is reported as a hole`);
        }
      }
      await model.verify(disk, 'after zeroes with noHole');
    },
  },
  {
    id: 'zero/fast',
    title: 'a fast zero works or is refused with ERR_VD_NOT_SUPPORTED touching nothing; without capabilities.fastZero it is always refused',
    requires: ['write', 'zero'],
    async body({ disk, caps, window, rng, range }) {
      const model = await Model.load(disk, 0, window);
      const data = rng.bytes(window, { nonZero: true });
      await disk.write(0, data);
      model.write(0, data);
      for (let i = 0; i < 4; i++) {
        const r = range(0, window, 256 * 1024);
        if (caps.fastZero) {
          // NBD lets a server that offers FAST_ZERO still refuse a request it cannot do quickly.
          try {
            await disk.zero(r.offset, r.length, { fast: true });
            model.zero(r.offset, r.length);
          } catch (err) {
            if ((err as { code?: string }).code !== 'ERR_VD_NOT_SUPPORTED') throw err;
          }
        } else {
          await rejectsWith(
            () => disk.zero(r.offset, r.length, { fast: true }),
            'ERR_VD_NOT_SUPPORTED',
            'fast zero on a disk without fastZero',
          );
        }
        await model.verify(disk, caps.fastZero ? 'after a fast zero' : 'after a refused fast zero');
      }
    },
  },
  {
    id: 'zero-trim/unsupported',
    title: "zero and trim fail with ERR_VD_NOT_SUPPORTED exactly when capabilities say 'none', and work otherwise",
    requires: ['write'],
    async body({ disk, caps, min, rng }) {
      const model = await Model.load(disk, 0, 16 * min);
      const data = rng.bytes(16 * min, { nonZero: true });
      await disk.write(0, data);
      model.write(0, data);
      if (caps.zero === 'none')
        await rejectsWith(() => disk.zero(min, 2 * min), 'ERR_VD_NOT_SUPPORTED', "zero with capabilities.zero 'none'");
      else {
        await disk.zero(min, 2 * min);
        model.zero(min, 2 * min);
      }
      if (caps.trim === 'none')
        await rejectsWith(() => disk.trim(8 * min, 2 * min), 'ERR_VD_NOT_SUPPORTED', "trim with capabilities.trim 'none'");
      else {
        await disk.trim(8 * min, 2 * min);
        if (caps.trimReadsZero) model.zero(8 * min, 2 * min);
        else model.forget(8 * min, 2 * min);
      }
      await model.verify(disk, 'after zero and trim');
    },
  },
  {
    id: 'trim/neighbours',
    title: 'trimmed ranges leave their neighbours intact and read as zeroes exactly when capabilities.trimReadsZero',
    requires: ['write', 'trim'],
    async body({ disk, caps, window, rng, range, min }) {
      const model = await Model.load(disk, 0, window);
      const data = rng.bytes(window, { nonZero: true });
      await disk.write(0, data);
      model.write(0, data);
      for (let i = 0; i < 16; i++) {
        const r = range(0, window, i % 4 === 0 ? 512 * 1024 : 4 * 4096);
        await disk.trim(r.offset, r.length);
        const back = await disk.read(r.offset, r.length);
        if (caps.trimReadsZero) {
          allZero(back, r.offset, 'a trimmed range (trimReadsZero)');
          model.zero(r.offset, r.length);
        } else {
          model.forget(r.offset, r.length);
        }
        const lo = Math.max(0, r.offset - 2 * min);
        await model.verify(disk, `neighbours of trim ${r.offset}+${r.length}`, lo, Math.min(window, r.offset + r.length + 2 * min) - lo);
      }
      // Written again, trimmed bytes hold data like any other.
      const fill = rng.bytes(window);
      await disk.write(0, fill);
      model.write(0, fill);
      await model.verify(disk, 'after rewriting trimmed ranges');
    },
  },
];
