import type { Disk, ExtentType } from '@vd/core';
import type { ChangedArea, ChangedAreas } from './tracker.js';

/**
 * The areas of `disk`'s `context` extents whose type `pick` accepts, merged, from `startOffset`
 * to the disk's end, paged at `maxAreas` like `queryChangedAreas` (arguments already checked).
 */
export async function areasOfExtents(
  disk: Disk,
  context: string,
  pick: (type: ExtentType) => boolean,
  startOffset: number,
  maxAreas: number,
  signal?: AbortSignal,
): Promise<ChangedAreas> {
  const length = disk.size - startOffset;
  const areas: ChangedArea[] = [];
  if (length === 0) return { startOffset, length, areas };
  for await (const e of disk.extents({ offset: startOffset, length, context, signal })) {
    if (!pick(e.type)) continue;
    const last = areas[areas.length - 1];
    if (last && last.start + last.length === e.offset) {
      last.length += e.length;
      continue;
    }
    if (areas.length >= maxAreas) return { startOffset, length: e.offset - startOffset, areas };
    areas.push({ start: e.offset, length: e.length });
  }
  return { startOffset, length, areas };
}
