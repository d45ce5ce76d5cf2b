import { fileURLToPath } from 'node:url';
import {
  BASE_ALLOCATION,
  type BlockSource,
  type Capabilities,
  Disk,
  type DiskInfo,
  type Extent,
  type FileSpan,
  type IoOptions,
  VdError,
  type WriteOptions,
  type ZeroOptions,
} from '@vd/core';
import { fileFingerprint } from './fingerprint.js';
import { type ChangedAreas, type QueryOptions, Tracker, type TrackOptions } from './tracker.js';

export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
export const DEFAULT_BITMAP = 'vd-cbt';
/** Extents per `_extents` answer for a bitmap context; the Disk wrapper asks again for the rest. */
const MAX_EXTENTS = 65_536;

const trackers = new WeakMap<Disk, Tracker>();

/**
 * Tracks changes to a writable disk. The returned disk is the one to write through: every write,
 * zero and trim is marked in the sidecar before it reaches the inner disk. Closing it closes the
 * inner disk and records a clean close. Get the tracker with `trackerOf(tracked)` (for `mark()`).
 *
 * `disk` is a `Disk`, or the `BlockSource` a transport or format opened (the host's case): then
 * requests reach it through one validating wrapper instead of two, which is measurably faster.
 */
export async function track(disk: Disk | BlockSource, opts: TrackOptions): Promise<Disk> {
  if (disk instanceof Disk && trackers.has(disk)) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'this disk is already a tracked disk; track the inner disk once');
  }
  const bitmap = opts.bitmap ?? DEFAULT_BITMAP;
  if (typeof bitmap !== 'string' || bitmap.length === 0)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'CBT bitmap name must be a non-empty string');
  const source = disk instanceof Disk ? sourceOf(disk) : disk;
  if (!source || typeof source._read !== 'function' || !source.capabilities) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'track() takes a Disk or a BlockSource');
  }
  const readOnly = source.capabilities.readOnly || typeof source._write !== 'function';
  let fingerprint = opts.fingerprint;
  if (fingerprint === undefined && disk instanceof Disk && disk.location?.startsWith('file:')) {
    const path = localPath(disk.location);
    if (path) fingerprint = fileFingerprint(path);
  }
  const tracker = await Tracker.open({ size: source.size, readOnly }, { ...opts, fingerprint });
  let tracked: Disk;
  try {
    tracked = new Disk(new TrackedSource(source, tracker, DIRTY_BITMAP_PREFIX + bitmap), {
      transport: disk instanceof Disk ? disk.transport : 'source',
      location: disk instanceof Disk ? disk.location : undefined,
      selection: disk instanceof Disk ? [...disk.selection] : undefined,
    });
  } catch (err) {
    await tracker.destroy();
    throw err;
  }
  trackers.set(tracked, tracker);
  return tracked;
}

function localPath(location: string): string | undefined {
  try {
    return fileURLToPath(location);
  } catch {
    return undefined; // file://host/… is not local: no default fingerprint
  }
}

/**
 * A Disk seen as a block source. It emulates what its own source lacks, so zero and FUA are
 * offered as "native" here: passing them on is all there is to do.
 */
function sourceOf(d: Disk): BlockSource {
  const c = d.capabilities;
  return {
    size: d.size,
    capabilities: {
      ...c,
      zero: c.zero === 'none' ? 'none' : 'native',
      fua: c.fua === 'none' && !c.flush ? 'none' : 'native',
      extents: [...new Set([BASE_ALLOCATION, ...c.extents])],
    },
    _read: async (offset, into, opts) => {
      await d.readInto(offset, into, opts);
    },
    _write: c.readOnly ? undefined : (offset, data, opts) => d.write(offset, data, opts),
    _zero: c.zero === 'none' ? undefined : (offset, length, opts) => d.zero(offset, length, opts),
    _trim: c.trim === 'none' ? undefined : (offset, length, opts) => d.trim(offset, length, opts),
    _flush: (opts) => d.flush(opts),
    _extents: async (offset, length, context, opts) => {
      const out: Extent[] = [];
      for await (const e of d.extents({ offset, length, context, signal: opts.signal })) out.push(e);
      return out;
    },
    _info: () => d.info(),
    // Undefined where `d` cannot map the range: zero-copy consumers then read.
    _withFileSpans: (offset, length, fn, opts) => d.withFileSpans(offset, length, fn, opts),
    _close: () => d.close(),
    _destroy: (err) => d.destroy(err),
  };
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

/** Blocks changed after `after` as `changed` / `unchanged` extents (NBD: dirty bit set / clear). */
function bitmapExtents(tracker: Tracker, offset: number, length: number, after: number): Extent[] {
  return changedExtents(tracker.areas(offset, length, after, MAX_EXTENTS));
}

/** A page of changed areas as `changed` / `unchanged` extents covering the whole page: a dirty-bitmap context's answer. */
export function changedExtents(page: ChangedAreas): Extent[] {
  const out: Extent[] = [];
  let cursor = page.startOffset;
  for (const a of page.areas) {
    if (a.start > cursor) out.push({ offset: cursor, length: a.start - cursor, type: 'unchanged' });
    out.push({ offset: a.start, length: a.length, type: 'changed' });
    cursor = a.start + a.length;
  }
  const end = page.startOffset + page.length;
  if (cursor < end) out.push({ offset: cursor, length: end - cursor, type: 'unchanged' });
  return out;
}

export interface BitmapViewOptions {
  /** The context offered is `qemu:dirty-bitmap:<name>`. */
  name: string;
  /** Changes after this change ID … */
  since: string;
  /**
   * … as seen by a disk frozen at this one (a snapshot's). Checked, but it narrows nothing: a
   * block rewritten after it may have changed before it too (see `QueryOptions.upTo`).
   */
  upTo?: string;
}

/**
 * A read-only view of `disk` (typically the snapshot frozen at a mark) that also offers
 * `qemu:dirty-bitmap:<name>`: the blocks `tracker` saw change after `since`, up to `upTo`. The
 * host exports it so an NBD client reads "what changed since my last backup" next to the data,
 * as with `qemu-nbd -B`. Change IDs the tracker cannot answer fail with ERR_VD_CBT_RESET now,
 * not when a client asks. Closing the view closes `disk`.
 */
export function bitmapView(disk: Disk, tracker: Tracker, opts: BitmapViewOptions): Disk {
  if (disk.size !== tracker.size) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `the disk is ${disk.size} bytes and the tracker tracks ${tracker.size}`);
  }
  if (typeof opts.name !== 'string' || opts.name.length === 0)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'bitmap name must be a non-empty string');
  const after = tracker.pointOf(opts.since);
  if (opts.upTo !== undefined && tracker.pointOf(opts.upTo) < after) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `upTo ${opts.upTo} is older than ${opts.since}`);
  }
  const context = DIRTY_BITMAP_PREFIX + opts.name;
  const inner = sourceOf(disk);
  const view: BlockSource = {
    ...inner,
    capabilities: {
      ...inner.capabilities,
      readOnly: true,
      zero: 'none',
      trim: 'none',
      fua: 'none',
      extents: [...new Set([...inner.capabilities.extents, context])],
    },
    _write: undefined,
    _zero: undefined,
    _trim: undefined,
    _extents: async (offset, length, ctx, o) =>
      ctx === context ? bitmapExtents(tracker, offset, length, after) : inner._extents!(offset, length, ctx, o),
  };
  return new Disk(view, { transport: disk.transport, location: disk.location, readOnly: true });
}

/** Marks before it forwards; declares what the inner source declares, plus the bitmap context. */
class TrackedSource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly #inner: BlockSource;

  constructor(
    inner: BlockSource,
    readonly tracker: Tracker,
    readonly bitmapContext: string,
  ) {
    this.#inner = inner;
    this.size = inner.size;
    this.capabilities = { ...inner.capabilities, extents: [...new Set([...inner.capabilities.extents, bitmapContext])] };
    if (!inner._write) this.capabilities.readOnly = true;
    // Methods the inner source lacks stay absent, so the outer Disk's checks see the same source.
    if (!inner._zero) this._zero = undefined;
    if (!inner._trim) this._trim = undefined;
    if (!inner._flush) this._flush = undefined;
    if (!inner._withFileSpans) this._withFileSpans = undefined;
  }

  _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.#inner._read(offset, into, opts);
  }

  async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const point = this.tracker.enter();
    try {
      const marked = this.tracker.prepare(offset, data.length);
      if (marked) await marked;
      await this.#inner._write!(offset, data, opts);
    } finally {
      this.tracker.leave(point);
    }
  }

  _zero? = async (offset: number, length: number, opts: ZeroOptions): Promise<void> => {
    const point = this.tracker.enter();
    try {
      const marked = this.tracker.prepare(offset, length);
      if (marked) await marked;
      await this.#inner._zero!(offset, length, opts);
    } finally {
      this.tracker.leave(point);
    }
  };

  _trim? = async (offset: number, length: number, opts: WriteOptions): Promise<void> => {
    const point = this.tracker.enter();
    try {
      const marked = this.tracker.prepare(offset, length);
      if (marked) await marked;
      await this.#inner._trim!(offset, length, opts);
    } finally {
      this.tracker.leave(point);
    }
  };

  _flush? = (opts: IoOptions): Promise<void> => this.#inner._flush!(opts);

  /** Reads change nothing: zero-copy consumers (sendfile) go straight to the inner source's files. */
  _withFileSpans? = <T>(
    offset: number,
    length: number,
    fn: (spans: readonly FileSpan[]) => Promise<T>,
    opts: IoOptions,
  ): Promise<T | undefined> => this.#inner._withFileSpans!(offset, length, fn, opts);

  async _extents(offset: number, length: number, context: string, opts: IoOptions): Promise<Extent[]> {
    if (context === this.bitmapContext) return this.#bitmapExtents(offset, length);
    return this.#inner._extents!(offset, length, context, opts);
  }

  /**
   * Changes since the last mark. Before the first mark of an epoch (a new sidecar, or a reset)
   * nothing is known about what came before, so all of it counts as changed: a bitmap, unlike a
   * change ID, cannot say "reset".
   */
  #bitmapExtents(offset: number, length: number): Extent[] {
    const point = this.tracker.point;
    if (point === 1) return [{ offset, length, type: 'changed' }];
    return bitmapExtents(this.tracker, offset, length, point - 1);
  }

  _info(): DiskInfo {
    const t = this.tracker;
    const info = this.#inner._info?.() ?? { format: 'raw' };
    return { ...info, cbt: { epoch: t.epoch, point: t.point, granularity: t.granularity, durability: t.durability } };
  }

  async _close(): Promise<void> {
    try {
      await this.#inner._close();
    } finally {
      await this.tracker.close();
    }
  }

  async _destroy(err?: Error): Promise<void> {
    try {
      await (this.#inner._destroy ? this.#inner._destroy(err) : this.#inner._close());
    } finally {
      await this.tracker.destroy();
    }
  }
}
