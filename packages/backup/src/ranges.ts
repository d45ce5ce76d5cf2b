import type { CopyRange } from '@vd/core';
import { VdError } from '@vd/core';

/**
 * Rounds changed areas out to whole `unit`s (the child VMDK's grain), clipped to `size`, merged
 * and sorted. Areas come at the tracker's granularity, which may be finer or coarser than a grain:
 * a grain only partly changed is copied whole from the source, so the child never needs the
 * parent's bytes to fill it.
 */
export async function alignRanges(areas: AsyncIterable<CopyRange> | Iterable<CopyRange>, unit: number, size: number): Promise<CopyRange[]> {
  const out: CopyRange[] = [];
  let lastStart = -1;
  let unsorted = false;
  for await (const a of areas) {
    if (!Number.isSafeInteger(a.offset) || !Number.isSafeInteger(a.length) || a.offset < 0 || a.length < 0 || a.offset + a.length > size) {
      throw new VdError('ERR_VD_PROTOCOL', `a changed area ${a.offset}+${a.length} lies outside the disk (${size} bytes)`, {
        details: { offset: a.offset, length: a.length, size },
      });
    }
    if (a.length === 0) continue;
    if (a.offset < lastStart) unsorted = true;
    lastStart = a.offset;
    const start = Math.floor(a.offset / unit) * unit;
    const end = Math.min(size, Math.ceil((a.offset + a.length) / unit) * unit);
    out.push({ offset: start, length: end - start });
  }
  if (unsorted) out.sort((x, y) => x.offset - y.offset);
  const merged: CopyRange[] = [];
  for (const r of out) {
    const last = merged[merged.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.offset + last.length, r.offset + r.length) - last.offset;
    } else merged.push({ ...r });
  }
  return merged;
}

export function totalLength(ranges: readonly CopyRange[]): number {
  let n = 0;
  for (const r of ranges) n += r.length;
  return n;
}
