import { Disk, type Extent, MemorySource, type MemorySourceOptions } from '@vd/core';
import { describe, expect, it } from 'vitest';
import { type ConformanceSuite, createRng, defineConformance, type FactoryOptions } from '../src/index.js';

/**
 * The suite checks itself the way abstract-level's `test/self.js` does: a correct source passes,
 * and each deliberately broken source fails the case written to catch it. A case that could not
 * fail would show up here as a pass on a broken source.
 */

type Outcome = { status: 'pass' | 'skip' | 'fail'; reason?: string };

/** Runs every case with a plain runner (no vitest binding): the runner-agnostic path. */
async function outcomes(suite: ConformanceSuite): Promise<Map<string, Outcome>> {
  const out = new Map<string, Outcome>();
  for (const c of suite.cases) {
    let skipped: string | undefined;
    try {
      await c.run({
        skip: (reason) => {
          skipped = reason;
        },
      });
      out.set(c.id, skipped === undefined ? { status: 'pass' } : { status: 'skip', reason: skipped });
    } catch (err) {
      out.set(c.id, { status: 'fail', reason: (err as Error).message });
    }
  }
  await suite.teardown();
  return out;
}

function suiteOf(name: string, make: (opts: FactoryOptions) => Disk): ConformanceSuite {
  return defineConformance({ name, factory: async (opts) => make(opts) });
}

const MiB = 1024 * 1024;
const small = { blockSize: { minimum: 1, preferred: 4096, maximum: 64 * 1024 } };

/** Writes ignore the view's byteOffset: only requests the wrapper split (subarrays) go wrong. */
class IgnoresByteOffset extends MemorySource {
  override _write(offset: number, data: Uint8Array): Promise<void> {
    return super._write(offset, new Uint8Array(data.buffer, 0, data.length));
  }
}

/** Declares that trimmed space reads as zeroes, but trim does nothing. */
class TrimLies extends MemorySource {
  override async _trim(): Promise<void> {}
}

/** Zeroes one byte too many. */
class ZeroOverreach extends MemorySource {
  override _zero(offset: number, length: number, opts: { noHole?: boolean }): Promise<void> {
    return super._zero(offset, Math.min(length + 1, this.size - offset), opts);
  }
}

/** Reports everything as a hole. */
class ExtentsAllHole extends MemorySource {
  override async _extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, type: 'hole' }];
  }
}

/** Reads larger than 8 KiB come back as zeroes after the first 8 KiB. */
class ShortReads extends MemorySource {
  override async _read(offset: number, into: Uint8Array, opts: object): Promise<void> {
    await super._read(offset, into.subarray(0, Math.min(into.length, 8192)), opts);
    into.fill(0, 8192);
  }
}

/** A fast zero that is not fast: declared, but the source writes zeroes anyway and refuses nothing. */
class NoHoleIgnored extends MemorySource {
  override _zero(offset: number, length: number): Promise<void> {
    return super._zero(offset, length, {});
  }
}

function variant(Source: typeof MemorySource, opts: MemorySourceOptions = {}) {
  return ({ readOnly }: FactoryOptions) => new Disk(new Source(2 * MiB, opts), { readOnly });
}

describe('the conformance suite on itself', () => {
  it('passes a correct source and skips only on capabilities', async () => {
    const got = await outcomes(suiteOf('memory', variant(MemorySource, { capabilities: small })));
    const failed = [...got].filter(([, o]) => o.status === 'fail');
    expect(failed).toEqual([]);
    const skipped = [...got].filter(([, o]) => o.status === 'skip').map(([id]) => id);
    expect(skipped).toEqual(['errors/alignment']);
    expect(got.get('errors/alignment')?.reason).toContain('capabilities.blockSize.minimum is 1');
  });

  const broken: [string, (opts: FactoryOptions) => Disk, string[]][] = [
    ['writes that ignore byteOffset', variant(IgnoresByteOffset, { capabilities: small }), ['write/block-size-limits']],
    ['a trim that does not do what trimReadsZero promises', variant(TrimLies), ['trim/neighbours']],
    ['a zero that overreaches by a byte', variant(ZeroOverreach), ['zero/reads-zero', 'zero/no-hole']],
    ['extents that call data a hole', variant(ExtentsAllHole), ['extents/after-writes', 'extents/sub-ranges']],
    [
      'reads that lose data after 8 KiB',
      variant(ShortReads, { data: createRng('contents').bytes(2 * MiB) }),
      ['read/consistent', 'write/odd-offsets'],
    ],
    ['a zero that punches holes despite noHole', variant(NoHoleIgnored), ['zero/no-hole']],
  ];
  for (const [what, make, mustFail] of broken) {
    it(`fails ${what} in ${mustFail.join(', ')}`, async () => {
      const got = await outcomes(suiteOf(what, make));
      for (const id of mustFail) expect(got.get(id)?.status, `${id}: ${got.get(id)?.reason}`).toBe('fail');
    });
  }

  it('skips every case needing a writable disk when the factory only gives read-only ones, naming the capability', async () => {
    const suite = suiteOf('read-only memory', () => new Disk(new MemorySource(2 * MiB), { readOnly: true }));
    const got = await outcomes(suite);
    for (const c of suite.cases) {
      const o = got.get(c.id)!;
      expect(o.status, `${c.id}: ${o.reason}`).not.toBe('fail');
      if (c.requires.includes('write')) {
        expect(o.status).toBe('skip');
        expect(o.reason).toContain('capabilities.readOnly is true');
      }
    }
    expect(got.get('read-only/refuses-changes')?.status).toBe('pass');
  });

  it('skips the read-only case when the factory cannot give a read-only disk', async () => {
    const got = await outcomes(suiteOf('always writable', () => new Disk(new MemorySource(2 * MiB))));
    expect(got.get('read-only/refuses-changes')).toMatchObject({
      status: 'skip',
      reason: expect.stringContaining('capabilities.readOnly false'),
    });
  });

  it('fails every case, with a clear message, when the factory gives a disk smaller than 1 MiB', async () => {
    const got = await outcomes(suiteOf('tiny', () => new Disk(new MemorySource(4096))));
    for (const [, o] of got) {
      expect(o.status).toBe('fail');
      expect(o.reason).toContain('at least 1 MiB');
    }
  });
});

describe('createRng', () => {
  it('is reproducible from its seed and differs between seeds', () => {
    expect(createRng('a').bytes(64)).toEqual(createRng('a').bytes(64));
    expect(createRng('a').bytes(64)).not.toEqual(createRng('b').bytes(64));
    const r = createRng('range');
    for (let i = 0; i < 1000; i++) {
      const v = r.int(3, 9);
      expect(v >= 3 && v <= 9 && Number.isInteger(v)).toBe(true);
    }
    expect(createRng('nz').bytes(4096, { nonZero: true }).includes(0)).toBe(false);
  });
});
