import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HexDumper, hexLines } from '../src/hexdump.js';

describe('HexDumper', () => {
  it('prints the same lines however the bytes are cut into pieces', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(300)), fc.nat(2 ** 40), (bytes, cuts, address) => {
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const dumper = new HexDumper(address);
        let out = '';
        let from = 0;
        for (const p of [...points, bytes.length]) {
          out += dumper.push(bytes.subarray(from, p));
          from = p;
        }
        out += dumper.end();
        expect(out).toBe(hexLines(bytes, address));
      }),
    );
  });

  it('lays a line out like xxd', () => {
    expect(hexLines(new TextEncoder().encode('Hello\n\x00~'), 0x1be)).toBe('000001be: 4865 6c6c 6f0a 007e                      Hello..~\n');
  });
});
