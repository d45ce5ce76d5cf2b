const S = 512;

/** ESX vmfsSparse (COWD) redo log from the documented layout: 2048-byte header, GD, 4096-entry GTs, grains. */
export function buildCowd(capacitySectors: number, grainSectors: number, grains: Map<number, Uint8Array>): Uint8Array {
  const gtes = 4096;
  const gdEntries = Math.ceil(capacitySectors / (grainSectors * gtes));
  const gdSectors = Math.ceil((gdEntries * 4) / S);
  const usedTables = [...new Set([...grains.keys()].map((g) => Math.floor(g / gtes)))].sort((a, b) => a - b);
  let next = 4 + gdSectors;
  const tableAt = new Map<number, number>();
  for (const t of usedTables) {
    tableAt.set(t, next);
    next += (gtes * 4) / S;
  }
  const grainAt = new Map<number, number>();
  for (const g of [...grains.keys()].sort((a, b) => a - b)) {
    grainAt.set(g, next);
    next += grainSectors;
  }
  const out = new Uint8Array(next * S);
  const v = new DataView(out.buffer);
  out.set([0x43, 0x4f, 0x57, 0x44]);
  v.setUint32(4, 1, true);
  v.setUint32(8, 3, true);
  v.setUint32(12, capacitySectors, true);
  v.setUint32(16, grainSectors, true);
  v.setUint32(20, 4, true);
  v.setUint32(24, gdEntries, true);
  v.setUint32(28, next, true);
  v.setUint32(1060, 1, true);
  for (const [t, at] of tableAt) v.setUint32(4 * S + t * 4, at, true);
  for (const [g, at] of grainAt) {
    v.setUint32(tableAt.get(Math.floor(g / gtes))! * S + (g % gtes) * 4, at, true);
    out.set(grains.get(g)!, at * S);
  }
  return out;
}

/** ESXi seSparse extent from the documented layout (4 KiB grains, 4096-entry u64 tables). */
export function buildSeSparse(capacitySectors: number, grains: Map<number, Uint8Array | 'zero'>): Uint8Array {
  const gtes = 4096;
  const gdEntries = Math.ceil(capacitySectors / (8 * gtes));
  const gdSectors = Math.max(1, Math.ceil((gdEntries * 8) / S));
  const used = [...new Set([...grains.keys()].map((g) => Math.floor(g / gtes)))].sort((a, b) => a - b);
  const gdOffset = 4;
  const gtOffset = gdOffset + gdSectors;
  const gtSize = Math.max(1, used.length) * 64;
  const bitmapOffset = gtOffset + gtSize;
  const backmapOffset = bitmapOffset + 1;
  const grainsOffset = backmapOffset + 1;
  const data = [...grains].filter(([, d]) => d !== 'zero');
  const grainsSize = Math.max(8, data.length * 8);
  const out = new Uint8Array((grainsOffset + grainsSize) * S);
  const v = new DataView(out.buffer);
  const u64 = (at: number, x: number | bigint) => v.setBigUint64(at, BigInt(x), true);
  u64(0, 0xcafebabe);
  u64(8, 0x0000000200000001n);
  u64(16, capacitySectors);
  u64(24, 8);
  u64(32, 64);
  u64(80, 1); // volatile header
  u64(88, 1);
  u64(96, 2); // journal header
  u64(104, 1);
  u64(112, 3); // journal
  u64(120, 1);
  u64(128, gdOffset);
  u64(136, gdSectors);
  u64(144, gtOffset);
  u64(152, gtSize);
  u64(160, bitmapOffset);
  u64(168, 1);
  u64(176, backmapOffset);
  u64(184, 1);
  u64(192, grainsOffset);
  u64(200, grainsSize);
  u64(S, 0xcafecafe);
  for (const [i, t] of used.entries()) u64(gdOffset * S + t * 8, (0x10000000n << 32n) | BigInt(i));
  let idx = 0;
  for (const [g, d] of [...grains].sort((a, b) => a[0] - b[0])) {
    const table = used.indexOf(Math.floor(g / gtes));
    const at = (gtOffset + table * 64) * S + (g % gtes) * 8;
    if (d === 'zero') {
      u64(at, 0x2n << 60n);
      continue;
    }
    const i = BigInt(idx++);
    // The grain index is split: its low 12 bits go to bits 48-59, the rest to bits 0-47.
    u64(at, (0x3n << 60n) | ((i & 0xfffn) << 48n) | (i >> 12n));
    out.set(d, (grainsOffset + Number(i) * 8) * S);
  }
  return out;
}
