import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isVdError } from '../../src/errors.js';
import {
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NEWLINE_TEST,
  FLAG_REDUNDANT_GD,
  FLAG_ZEROED_GTE,
  GD_AT_END,
} from '../../src/formats/vmdk/constants.js';
import { parseCowdHeader } from '../../src/formats/vmdk/cowd.js';
import { type Descriptor, looksLikeDescriptor, parseDescriptor, serializeDescriptor } from '../../src/formats/vmdk/descriptor.js';
import { encodeMarker, encodeSparseHeader, parseMarker, parseSparseHeader, type SparseHeader } from '../../src/formats/vmdk/header.js';
import { parseSeSparseHeader } from '../../src/formats/vmdk/sesparse.js';

const headerArb: fc.Arbitrary<SparseHeader> = fc
  .record({
    version: fc.integer({ min: 1, max: 3 }),
    flagBits: fc.subarray([FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GD, FLAG_ZEROED_GTE, FLAG_COMPRESSED]),
    markers: fc.boolean(),
    capacity: fc.integer({ min: 0, max: 2 ** 32 }),
    grainShift: fc.integer({ min: 0, max: 16 }),
    descriptorOffset: fc.integer({ min: 0, max: 100 }),
    descriptorSize: fc.integer({ min: 1, max: 2048 }),
    rgdOffset: fc.integer({ min: 0, max: 2 ** 32 }),
    gdOffset: fc.integer({ min: 0, max: 2 ** 32 }),
    gdAtEnd: fc.boolean(),
    overHead: fc.integer({ min: 0, max: 2 ** 32 }),
    uncleanShutdown: fc.boolean(),
  })
  .map((r) => {
    let flags = r.flagBits.reduce((a, b) => a | b, 0);
    if (r.markers && flags & FLAG_COMPRESSED) flags |= FLAG_MARKERS;
    return {
      version: r.version,
      flags,
      capacity: r.capacity,
      grainSize: 2 ** r.grainShift,
      descriptorOffset: r.descriptorOffset,
      descriptorSize: r.descriptorOffset === 0 ? 0 : r.descriptorSize,
      numGTEsPerGT: 512,
      rgdOffset: r.rgdOffset,
      gdOffset: r.gdAtEnd ? 0 : r.gdOffset,
      gdAtEnd: r.gdAtEnd,
      overHead: r.overHead,
      uncleanShutdown: r.uncleanShutdown,
      compressAlgorithm: flags & FLAG_COMPRESSED ? 1 : 0,
    };
  });

function codedOrOk(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    if (!isVdError(err)) throw err;
  }
}

describe('sparse header codec', () => {
  it('round-trips every valid header', () => {
    fc.assert(
      fc.property(headerArb, (h) => {
        expect(parseSparseHeader(encodeSparseHeader(h))).toEqual(h);
      }),
    );
  });

  it('answers arbitrary bytes with a header or a coded error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), fc.boolean(), (bytes, magic) => {
        if (magic && bytes.length >= 4) bytes.set([0x4b, 0x44, 0x4d, 0x56]);
        codedOrOk(() => parseSparseHeader(bytes));
        codedOrOk(() => parseCowdHeader(bytes));
        codedOrOk(() => parseSeSparseHeader(bytes));
      }),
    );
  });

  const valid = (): SparseHeader => ({
    version: 1,
    flags: 3,
    capacity: 2048,
    grainSize: 128,
    descriptorOffset: 1,
    descriptorSize: 20,
    numGTEsPerGT: 512,
    rgdOffset: 21,
    gdOffset: 22,
    gdAtEnd: false,
    overHead: 128,
    uncleanShutdown: false,
    compressAlgorithm: 0,
  });
  const bad: [string, (b: Uint8Array, v: DataView) => void, string][] = [
    ['unknown incompatible flag', (_b, v) => v.setUint32(8, 0x40000 | 3, true), 'ERR_VD_UNKNOWN_FORMAT'],
    ['version 4', (_b, v) => v.setUint32(4, 4, true), 'ERR_VD_UNKNOWN_FORMAT'],
    ['grain size 0', (_b, v) => v.setBigUint64(20, 0n, true), 'ERR_VD_CORRUPT'],
    ['huge grain', (_b, v) => v.setBigUint64(20, 1n << 40n, true), 'ERR_VD_CORRUPT'],
    ['grain not a power of two', (_b, v) => v.setBigUint64(20, 96n, true), 'ERR_VD_CORRUPT'],
    ['numGTEsPerGT 1024', (_b, v) => v.setUint32(44, 1024, true), 'ERR_VD_CORRUPT'],
    ['capacity over 2 TiB', (_b, v) => v.setBigUint64(12, 1n << 33n, true), 'ERR_VD_CORRUPT'],
    ['gdOffset past 2^53', (_b, v) => v.setBigUint64(56, 1n << 60n, true), 'ERR_VD_CORRUPT'],
    ['text-mode damage', (b) => (b[75] = 0x0a), 'ERR_VD_CORRUPT'],
    ['markers without compression', (_b, v) => v.setUint32(8, FLAG_MARKERS | 1, true), 'ERR_VD_CORRUPT'],
    [
      'compression algorithm 7',
      (_b, v) => {
        v.setUint32(8, FLAG_COMPRESSED | 1, true);
        v.setUint16(77, 7, true);
      },
      'ERR_VD_UNKNOWN_FORMAT',
    ],
  ];
  for (const [what, mutate, code] of bad) {
    it(`refuses ${what} with ${code}`, () => {
      const b = encodeSparseHeader(valid());
      mutate(b, new DataView(b.buffer));
      expect(() => parseSparseHeader(b)).toThrow(expect.objectContaining({ code }));
    });
  }

  it('keeps unknown compatible flags (low 16 bits)', () => {
    const b = encodeSparseHeader(valid());
    new DataView(b.buffer).setUint32(8, 0x0100 | 3, true);
    expect(parseSparseHeader(b).flags).toBe(0x0103);
  });

  it('encodes GD_AT_END as all ones', () => {
    const b = encodeSparseHeader({ ...valid(), gdAtEnd: true, gdOffset: 0 });
    expect(new DataView(b.buffer).getBigUint64(56, true)).toBe(GD_AT_END);
  });

  it('round-trips markers', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 0, max: 3 }), (n, type) => {
        expect(parseMarker(encodeMarker(n, type))).toEqual({ value: n, size: 0, type });
      }),
    );
  });
});

const keyArb = fc.stringMatching(/^[A-Za-z][A-Za-z0-9_]{0,10}(\.[A-Za-z0-9_]{1,8}){0,2}$/);
const valueArb = fc.stringMatching(/^[ -!#-~]{0,30}$/);
const descriptorArb: fc.Arbitrary<Descriptor> = fc.record({
  version: fc.integer({ min: 1, max: 3 }),
  cid: fc.integer({ min: 0, max: 0xffffffff }),
  parentCid: fc.integer({ min: 0, max: 0xffffffff }),
  createType: fc.constantFrom('monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'vmfs', 'streamOptimized', 'seSparse'),
  extents: fc.array(
    fc.oneof(
      fc.record({
        access: fc.constantFrom('RW' as const, 'RDONLY' as const),
        sectors: fc.integer({ min: 1, max: 2 ** 40 }),
        kind: fc.constant('ZERO' as const),
      }),
      fc.record({
        access: fc.constantFrom('RW' as const, 'RDONLY' as const, 'NOACCESS' as const),
        sectors: fc.integer({ min: 1, max: 2 ** 40 }),
        kind: fc.constantFrom('SPARSE' as const, 'VMFS' as const, 'VMFSSPARSE' as const, 'SESPARSE' as const),
        fileName: fc.stringMatching(/^[a-zA-Z0-9 _.-]{1,20}$/),
      }),
      fc.record({
        access: fc.constant('RW' as const),
        sectors: fc.integer({ min: 1, max: 2 ** 40 }),
        kind: fc.constant('FLAT' as const),
        fileName: fc.stringMatching(/^[a-zA-Z0-9 _.-]{1,20}$/),
        offset: fc.integer({ min: 0, max: 2 ** 40 }),
      }),
    ),
    { minLength: 1, maxLength: 6 },
  ),
  ddb: fc
    .array(
      fc.tuple(
        keyArb.map((k) => `ddb.${k}`),
        valueArb,
      ),
      { maxLength: 8 },
    )
    .map((a) => new Map(a)),
  other: fc.constant(new Map<string, string>()),
});

describe('descriptor codec', () => {
  it('round-trips every descriptor', () => {
    fc.assert(
      fc.property(descriptorArb, fc.option(fc.stringMatching(/^[a-z0-9/._-]{1,20}$/), { nil: undefined }), (d, hint) => {
        if (hint !== undefined) d.parentFileNameHint = hint;
        const text = serializeDescriptor(d);
        expect(looksLikeDescriptor(new TextEncoder().encode(text))).toBe(true);
        expect(parseDescriptor(text)).toEqual(d);
      }),
    );
  });

  it('parses qemu and ESXi descriptors, CRLF included', () => {
    const esxi = [
      '# Disk DescriptorFile',
      'version=1',
      'encoding="UTF-8"',
      'CID=5352cace',
      'parentCID=ffffffff',
      'isNativeSnapshot="no"',
      'createType="vmfs"',
      '',
      '# Extent description',
      'RW 268435456 VMFS "sql-flat.vmdk"',
      '',
      '# Change Tracking File',
      'changeTrackPath="sql-ctk.vmdk"',
      '',
      '# The Disk Data Base',
      '#DDB',
      '',
      'ddb.adapterType = "lsilogic"',
      'ddb.thinProvisioned = "1"',
      'ddb.uuid = "60 00 C2 97 ee 00 4e ed-cb 09 ab 10 91 3f 7f 99"',
    ].join('\r\n');
    const d = parseDescriptor(esxi);
    expect(d).toMatchObject({ cid: 0x5352cace, parentCid: 0xffffffff, createType: 'vmfs', encoding: 'UTF-8' });
    expect(d.extents).toEqual([{ access: 'RW', sectors: 268435456, kind: 'VMFS', fileName: 'sql-flat.vmdk' }]);
    expect(d.other.get('changeTrackPath')).toBe('sql-ctk.vmdk');
    expect(d.ddb.get('ddb.thinProvisioned')).toBe('1');
    // Preserved across a rewrite.
    expect(parseDescriptor(serializeDescriptor(d))).toEqual(d);
  });

  const garbage: [string, string][] = [
    ['empty', ''],
    ['no version', 'CID=1\ncreateType="x"\nRW 1 FLAT "a"\n'],
    ['version 9', 'version=9\n'],
    ['no extents', 'version=1\nCID=1\ncreateType="monolithicFlat"\n'],
    ['unknown extent type', 'version=1\ncreateType="x"\nRW 1 WEIRD "a"\n'],
    ['flat without file', 'version=1\ncreateType="x"\nRW 1 FLAT\n'],
    ['bad CID', 'version=1\nCID=zzzz\ncreateType="x"\nRW 1 FLAT "a"\n'],
    ['sizes overflow', `version=1\ncreateType="x"\n${'RW 9999999999999999 ZERO\n'.repeat(3)}`],
    ['line noise', 'version=1\n\u0001\u0002 garbage\n'],
  ];
  for (const [what, text] of garbage) {
    it(`refuses a descriptor with ${what}`, () => {
      let err: unknown;
      try {
        parseDescriptor(text);
      } catch (e) {
        err = e;
      }
      expect(isVdError(err)).toBe(true);
    });
  }

  it('answers arbitrary text with a descriptor or a coded error', () => {
    fc.assert(fc.property(fc.string({ maxLength: 400 }), (s) => codedOrOk(() => parseDescriptor(`version=1\n${s}`))));
  });
});
