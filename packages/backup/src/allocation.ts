import { BASE_ALLOCATION, type BlockSource, type CopyRange, Disk, type Extent, type IoOptions, readOnlyCapabilities } from '@vd/core';

/**
 * The source's allocation over the changed ranges, asked for many ranges at once. The copy engine
 * asks range by range, one round trip each; over a network with thousands of small changed
 * ranges those round trips, not the data, would set an incremental's time.
 */
export async function allocationOf(
  disk: Disk,
  ranges: readonly CopyRange[],
  opts: { inFlight?: number; signal?: AbortSignal } = {},
): Promise<Extent[]> {
  const per: Extent[][] = new Array(ranges.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= ranges.length) return;
      const r = ranges[i]!;
      const out: Extent[] = [];
      for await (const e of disk.extents({ offset: r.offset, length: r.length, signal: opts.signal })) out.push(e);
      per[i] = out;
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.inFlight ?? 16, ranges.length) }, worker));
  return per.flat();
}

/**
 * `disk` with its `base:allocation` answered from `known` (sorted, disjoint extents) instead of
 * asking the source; ranges not covered read as data, which is always correct. Closing it leaves
 * `disk` open.
 */
export function withKnownAllocation(disk: Disk, known: readonly Extent[]): Disk {
  const source: BlockSource = {
    size: disk.size,
    capabilities: { ...readOnlyCapabilities(disk.capabilities), extents: [BASE_ALLOCATION] },
    _read: async (offset: number, into: Uint8Array, opts: IoOptions) => {
      await disk.readInto(offset, into, opts);
    },
    _extents: async (offset: number, length: number) => {
      const end = offset + length;
      // The first known extent ending after `offset`.
      let lo = 0;
      let hi = known.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (known[mid]!.offset + known[mid]!.length <= offset) lo = mid + 1;
        else hi = mid;
      }
      const out: Extent[] = [];
      let at = offset;
      for (let i = lo; i < known.length && at < end; i++) {
        const e = known[i]!;
        if (e.offset > at) {
          out.push({ offset: at, length: Math.min(e.offset, end) - at, type: 'data' });
          at = Math.min(e.offset, end);
          if (at >= end) break;
        }
        const stop = Math.min(e.offset + e.length, end);
        if (stop > at) out.push({ offset: at, length: stop - at, type: e.type });
        at = Math.max(at, stop);
      }
      if (at < end) out.push({ offset: at, length: end - at, type: 'data' });
      return out;
    },
    _info: () => disk.info(),
    _close: async () => {},
  };
  return new Disk(source, { transport: disk.transport, location: disk.location, readOnly: true });
}
