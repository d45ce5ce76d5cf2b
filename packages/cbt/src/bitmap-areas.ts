import { type Disk, type ExtentType, VdError } from '@vd/core';
import { areasOfExtents } from './extent-areas.js';
import { DIRTY_BITMAP_PREFIX } from './track.js';
import { type ChangedAreas, DEFAULT_MAX_AREAS } from './tracker.js';

export interface BitmapAreasOptions {
  startOffset?: number;
  maxAreas?: number;
  /** Which extent types mean "changed"; default `changed` and `dirty` (qemu's bit 0 set). */
  isChanged?: (type: ExtentType) => boolean;
  signal?: AbortSignal;
}

const defaultIsChanged = (type: ExtentType) => type === 'changed' || type === 'dirty';

/**
 * The changed areas a disk's `qemu:dirty-bitmap:<name>` extents describe (for instance an NBD
 * export of `qemu-nbd -B <name>`, or a tracked disk), in the shape and paging of
 * `queryChangedAreas`. `bitmap` is the bitmap name or the full context name.
 */
export async function changedAreasFromBitmap(disk: Disk, bitmap: string, opts: BitmapAreasOptions = {}): Promise<ChangedAreas> {
  const context = bitmap.startsWith(DIRTY_BITMAP_PREFIX) ? bitmap : DIRTY_BITMAP_PREFIX + bitmap;
  const startOffset = opts.startOffset ?? 0;
  const maxAreas = opts.maxAreas ?? DEFAULT_MAX_AREAS;
  const isChanged = opts.isChanged ?? defaultIsChanged;
  if (!Number.isSafeInteger(startOffset) || startOffset < 0 || startOffset > disk.size) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `startOffset ${startOffset} is not within the disk (0…${disk.size})`);
  }
  if (!Number.isSafeInteger(maxAreas) || maxAreas < 1) throw new VdError('ERR_VD_INVALID_ARGUMENT', `maxAreas ${maxAreas} < 1`);
  return areasOfExtents(disk, context, isChanged, startOffset, maxAreas, opts.signal);
}
