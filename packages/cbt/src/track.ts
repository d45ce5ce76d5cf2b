import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  Disk,
  type DiskInfo,
  type Extent,
  type IoOptions,
  VdError,
  type WriteOptions,
  type ZeroOptions,
} from '@vd/core';
import { type ChangedAreas, type QueryOptions, Tracker, type TrackOptions } from './tracker.js';

export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
export const DEFAULT_BITMAP = 'vd-cbt';
/** Extents per `_extents` answer for a bitmap context; the Disk wrapper asks again for the rest. */
const MAX_EXTENTS = 65_536;

const trackers = new WeakMap<Disk, Tracker>();

/**
 * Tracks changes to a writable disk. The returned disk is the one to write through: every write,
 * zero and trim is marked in the sidecar before it reaches `disk`. Closing it closes `disk` and
 * records a clean close. Get the tracker with `trackerOf(tracked)` (for `mark()`).
 */
export async function track(disk: Disk, opts: TrackOptions): Promise<Disk> {
  if (trackers.has(disk)) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'this disk is already a tracked disk; track the inner disk once');
  const bitmap = opts.bitmap ?? DEFAULT_BITMAP;
  if (typeof bitmap !== 'string' || bitmap.length === 0)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'CBT bitmap name must be a non-empty string');
  const tracker = await Tracker.open(disk, opts);
  const tracked = new Disk(new TrackedSource(disk, tracker, DIRTY_BITMAP_PREFIX + bitmap), {
    transport: disk.transport,
    location: disk.location,
    selection: [...disk.selection],
  });
  trackers.set(tracked, tracker);
  return tracked;
}

/** The tracker behind a disk `track()` returned; ERR_VD_INVALID_ARGUMENT for any other disk. */
export function trackerOf(disk: Disk): Tracker {
  const t = trackers.get(disk);
  if (!t) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'this disk is not tracked; open it with track()');
  return t;
}

/** Names the tracked disk's state now; returns its change ID (see `Tracker.mark`). */
export function mark(disk: Disk): Promise<string> {
  return trackerOf(disk).mark();
}

/**
 * The areas of a tracked disk changed since `changeId`, or with `*` every allocated area, from
 * `opts.startOffset`, shaped as vSphere's `DiskChangeInfo`. Page on with
 * `startOffset = answer.startOffset + answer.length` until it reaches `disk.size`.
 * ERR_VD_CBT_RESET: the change ID is of another epoch or disk; take a full backup.
 */
export function queryChangedAreas(disk: Disk, changeId: string, opts: QueryOptions = {}): Promise<ChangedAreas> {
  return trackerOf(disk).queryChangedAreas(changeId, opts, disk);
}

/**
 * The wrapper between the consumer's Disk and the inner Disk: marks before it forwards. It
 * declares what the inner disk effectively offers, so the outer wrapper emulates nothing twice.
 */
class TrackedSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;

  constructor(
    readonly inner: Disk,
    readonly tracker: Tracker,
    readonly bitmapContext: string,
  ) {
    const c = inner.capabilities;
    this.size = inner.size;
    this.capabilities = {
      ...c,
      // The inner Disk emulates zeroes and FUA itself; passing the request on is "native" here.
      zero: c.zero === 'none' ? 'none' : 'native',
      fua: c.fua === 'none' && !c.flush ? 'none' : 'native',
      extents: [...new Set([BASE_ALLOCATION, ...c.extents, bitmapContext])],
    };
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.inner.readInto(offset, into, opts).then(() => {});
  }

  async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const point = this.tracker.enter();
    try {
      await this.tracker.prepare(offset, data.length);
      await this.inner.write(offset, data, opts);
    } finally {
      this.tracker.leave(point);
    }
  }

  async _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const point = this.tracker.enter();
    try {
      await this.tracker.prepare(offset, length);
      await this.inner.zero(offset, length, opts);
    } finally {
      this.tracker.leave(point);
    }
  }

  async _trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    const point = this.tracker.enter();
    try {
      await this.tracker.prepare(offset, length);
      await this.inner.trim(offset, length, opts);
    } finally {
      this.tracker.leave(point);
    }
  }

  _flush(opts: IoOptions): Promise<void> {
    return this.inner.flush(opts);
  }

  async _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    if (context === this.bitmapContext) return this.#bitmapExtents(offset, length);
    const out: Extent[] = [];
    for await (const e of this.inner.extents({ offset, length, context, signal: opts.signal })) out.push(e);
    return out;
  }

  /** Changes since the last mark, as `changed` / `unchanged` extents (NBD: dirty bit set / clear). */
  #bitmapExtents(offset: number, length: number): Extent[] {
    const point = this.tracker.point;
    const page = this.tracker.areas(offset, length, point - 1, point, MAX_EXTENTS);
    const out: Extent[] = [];
    let cursor = offset;
    for (const a of page.areas) {
      if (a.start > cursor) out.push({ offset: cursor, length: a.start - cursor, type: 'unchanged' });
      out.push({ offset: a.start, length: a.length, type: 'changed' });
      cursor = a.start + a.length;
    }
    const end = offset + page.length;
    if (cursor < end) out.push({ offset: cursor, length: end - cursor, type: 'unchanged' });
    return out;
  }

  _info(): DiskInfo {
    const t = this.tracker;
    return { ...this.inner.info(), cbt: { epoch: t.epoch, point: t.point, granularity: t.granularity, durability: t.durability } };
  }

  async _close(): Promise<void> {
    try {
      await this.inner.close();
    } finally {
      await this.tracker.close();
    }
  }

  async _destroy(err?: Error): Promise<void> {
    try {
      await this.inner.destroy(err);
    } finally {
      await this.tracker.destroy();
    }
  }
}
