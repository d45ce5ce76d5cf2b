import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { alignRanges, type ManifestBody, parseManifest, serializeManifest } from '../src/index.js';

const body = (over: Partial<ManifestBody> = {}): ManifestBody => ({
  format: 'vd-backup-point',
  version: 1,
  id: '0002',
  kind: 'incremental',
  parent: '0001',
  created: '2026-11-22T02:00:00.000Z',
  size: 1 << 20,
  changeId: 'epoch/2',
  source: { location: 'nbds://127.0.0.1:1/d', transport: 'nbdssl', strategy: 'host-snapshot', reason: 'changes' },
  disk: { file: 'disk.vmdk', subformat: 'monolithicSparse', cid: 'abcdef01', parentCid: '12345678', grainSize: 65536 },
  stats: { bytesRead: 65536, bytesWritten: 65536, bytesCovered: 131072, seconds: 0.1 },
  ranges: [
    [0, 65536],
    [131072, 65536],
  ],
  extents: [[0, 65536, 'a'.repeat(64)]],
  ...over,
});

const corrupt = (f: () => unknown) => {
  try {
    f();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return 'parsed';
};

describe('manifest', () => {
  it('round-trips and refuses any change to its bytes', () => {
    const text = serializeManifest(body());
    expect(parseManifest(text, 'm')).toMatchObject({ id: '0002', kind: 'incremental' });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: text.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const bytes = Buffer.from(text);
        bytes[at] = bytes[at]! ^ x;
        const code = corrupt(() => parseManifest(bytes.toString('latin1'), 'm'));
        // Whitespace changes outside strings leave the same JSON: those still parse, anything else is refused.
        if (code === 'parsed') expect(JSON.parse(bytes.toString('latin1'))).toEqual(JSON.parse(text));
        else expect(['ERR_VD_CORRUPT', 'ERR_VD_NOT_SUPPORTED']).toContain(code);
      }),
    );
  });

  it('refuses ranges and extents out of order or outside the disk, even with a matching checksum', () => {
    const cases: Partial<ManifestBody>[] = [
      { ranges: [[0, (1 << 20) + 1]] },
      {
        ranges: [
          [65536, 1],
          [0, 1],
        ],
      },
      { extents: [[0, 0, 'a'.repeat(64)]] },
      { extents: [[0, 1, 'not hex']] },
      { kind: 'full' },
      { id: '../x' },
      { disk: { file: '../../etc/passwd', subformat: 'x', cid: 'x', parentCid: null, grainSize: 1 } },
      { size: -1 },
    ];
    for (const c of cases) expect(corrupt(() => parseManifest(serializeManifest(body(c)), 'm'))).toBe('ERR_VD_CORRUPT');
    expect(corrupt(() => parseManifest(serializeManifest(body({ version: 2 as 1 })), 'm'))).toBe('ERR_VD_NOT_SUPPORTED');
    for (const junk of ['', 'null', '[]', '{"format":"vd-backup-point","version":1}', '\u0000']) {
      expect(corrupt(() => parseManifest(junk, 'm'))).toBe('ERR_VD_CORRUPT');
    }
  });
});

describe('alignRanges', () => {
  it('covers every changed byte with whole units, sorted and disjoint, inside the disk', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(512, 4096, 65536),
        fc.integer({ min: 1, max: 64 }),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: 300_000 })), { maxLength: 30 }),
        async (unit, units, raw) => {
          const size = unit * units - (units > 1 ? 512 : 0);
          const areas = raw.map(([o, l]) => {
            const offset = o % size;
            return { offset, length: Math.min(l, size - offset) };
          });
          const out = await alignRanges(areas, unit, size);
          let end = -1;
          for (const r of out) {
            expect(r.offset % unit).toBe(0);
            expect(r.offset + r.length === size || (r.offset + r.length) % unit === 0).toBe(true);
            expect(r.offset).toBeGreaterThan(end);
            expect(r.offset + r.length).toBeLessThanOrEqual(size);
            end = r.offset + r.length;
          }
          for (const a of areas) {
            if (a.length === 0) continue;
            expect(out.some((r) => r.offset <= a.offset && a.offset + a.length <= r.offset + r.length)).toBe(true);
          }
        },
      ),
    );
    await expect(alignRanges([{ offset: 10, length: 100 }], 512, 64)).rejects.toMatchObject({ code: 'ERR_VD_PROTOCOL' });
  });
});
