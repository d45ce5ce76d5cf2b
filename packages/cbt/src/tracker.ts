import { randomBytes } from 'node:crypto';
import { channel } from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import { BASE_ALLOCATION, type ByteStore, type Disk, VdError } from '@vd/core';
import { BlockMap } from './block-map.js';
import { currentBootId } from './boot-id.js';
import { ALL_AREAS, formatChangeId, parseChangeId, uuidOf } from './change-id.js';
import { areasOfExtents } from './extent-areas.js';
import { openSidecarFile } from './sidecar-file.js';
import {
  decodeHeader,
  decodePage,
  ENTRIES_PER_PAGE,
  encodeHeader,
  encodePage,
  FLAG_CLEAN,
  FLAG_SYNCED,
  HEADER_SIZE,
  isValidGranularity,
  isZeroPage,
  PAGE_SIZE,
  pageOffset,
  type SidecarHeader,
} from './sidecar-format.js';

const debug = debuglog('vd');
/** `{ epoch, reason, message, sidecar }` when an open starts a new epoch (a reset, or the first tracking). */
export const resetChannel = channel('vd:cbt:reset');

export const DEFAULT_GRANULARITY = 64 * 1024;
/** Areas per answer of `queryChangedAreas`; the caller pages on with `startOffset`. */
export const DEFAULT_MAX_AREAS = 16_384;
/** Sequential writers get marks reserved ahead: this many times the blocks of the write, within these bounds. */
const RESERVE_FACTOR = 8;
const RESERVE_MIN = 8;
const RESERVE_MAX = 256;
/** Counters are u32 and pages are indexed by number: 2^32 blocks (256 TiB at 64 KiB) at most. */
const MAX_BLOCKS = 2 ** 32;
/** Read the sidecar in slices of this size when opening it. */
const LOAD_CHUNK = 1 << 20;

/**
 * When a mark must be on stable storage.
 * - `boot` (default): written to the sidecar (the page cache) before the write is issued,
 *   fsynced at `mark()` and `close()`. A killed process loses nothing; after a host crash or
 *   reboot the unclean sidecar is not trusted and tracking resets, as ESXi does. Costs a 4 KiB
 *   pwrite when a write touches blocks not yet marked since the last point.
 * - `fsync`: fdatasync'd before the write it covers is issued (group commit: one fdatasync
 *   serves every write waiting at that moment). An unclean sidecar is trusted after any crash,
 *   power loss included; each first write to a block since the last point waits for a sync.
 */
export type Durability = 'fsync' | 'boot';

export interface TrackOptions {
  /** The sidecar file (e.g. `disk.img.cbt`); created when missing. Either this or `store`. */
  path?: string;
  /** The sidecar as a ByteStore (a datastore file); the tracker closes it. Needs `truncate` (which must also grow a file, sparse) to be writable. */
  store?: ByteStore;
  /** Bytes per tracked block, a power of two from 512 to 1 GiB; default 64 KiB, or the sidecar's. */
  granularity?: number;
  durability?: Durability;
  /**
   * Identifies the disk's content as of now (for a file: size, mtime, ctime, inode; see
   * `fileFingerprint`). Called at open and after the disk is closed; when the value at open
   * differs from the one recorded at the last clean close, the disk was changed without the
   * tracker and tracking resets. Without it such changes cannot be detected. Default: for a
   * Disk opened from a `file:` location, `fileFingerprint` of that file; `false` turns it off.
   */
  fingerprint?: (() => string | Promise<string>) | false;
  /** The tracked disk offers extents context `qemu:dirty-bitmap:<bitmap>`: changes since the last mark. Default `vd-cbt`. */
  bitmap?: string;
}

/** Why this open began a new epoch (every change ID handed out before is void). */
export type ResetReason =
  /** No sidecar yet: tracking starts here. */
  | 'created'
  | 'damaged'
  | 'granularity-changed'
  | 'size-changed'
  /** The fingerprint differs from the one recorded at the last clean close. */
  | 'changed-outside'
  /** The sidecar was left open by a crash it cannot vouch for (another boot, or no fingerprint of the crash). */
  | 'unclean';

export interface TrackerReset {
  reason: ResetReason;
  message: string;
}

export interface ChangedArea {
  start: number;
  length: number;
}

/** One page of an answer, shaped as vSphere's `DiskChangeInfo` (bytes). */
export interface ChangedAreas {
  /** The answer covers `[startOffset, startOffset + length)`; ask again from its end until the disk size. */
  startOffset: number;
  length: number;
  areas: ChangedArea[];
}

export interface QueryOptions {
  startOffset?: number;
  /** Answer at most this many areas (default 16 384). */
  maxAreas?: number;
  /**
   * The point the caller's data is frozen at (a snapshot's change ID). It is checked (same epoch,
   * not older than the start) but narrows nothing: the tracker keeps each block's newest change
   * only, so a block rewritten after `upTo` may also have changed before it, and is reported.
   * The answer is a superset of the changes up to `upTo`, never fewer.
   */
  upTo?: string;
}

interface Waiter {
  gen: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * The change tracker of one disk. Writes reach it through the tracked disk `track()` returns;
 * `mark()` names a point, `queryChangedAreas()` answers what changed since one.
 *
 * The promise it keeps: a block's mark is on the sidecar (synced, per `durability`) before any
 * write that changes the block is issued to the disk. Anything that could break that promise
 * (a missing or damaged sidecar, a changed fingerprint, an unclean sidecar it cannot vouch for)
 * starts a new epoch, so old change IDs fail with ERR_VD_CBT_RESET instead of under-reporting.
 */
export class Tracker {
  readonly granularity: number;
  readonly size: number;
  readonly durability: Durability;
  readonly readOnly: boolean;
  /** Set when this open started a new epoch (including the first open of a disk). */
  readonly reset: TrackerReset | undefined;

  readonly #map: BlockMap;
  readonly #store: ByteStore | undefined;
  readonly #fingerprint: TrackOptions['fingerprint'];
  #epoch: Uint8Array;
  #point: number;

  // Group commit: pages changed since the last commit, the commit generation each page's newest
  // change lands in, and who waits for which generation.
  readonly #dirty = new Set<number>();
  readonly #pageGen: Uint32Array;
  #headerDirty = false;
  /** The page count of the newest header written (see `SidecarHeader.pages`). */
  #headerPages: number;
  #syncWanted = false;
  #nextGen = 1;
  #committedGen = 0;
  #running = false;
  #committing: Promise<void> | undefined;
  #waiters: Waiter[] = [];
  #failed: VdError | undefined;
  /** Set for `boot` durability when the store can write synchronously (see `#writePagesNow`). */
  readonly #writeSync: ((position: number, data: Uint8Array) => void) | undefined;
  readonly #pageBuf = new Uint8Array(PAGE_SIZE);
  /** Per page, blocks `[from, to)` written to the sidecar as changed in `point` ahead of their writes (see `#reserve`). */
  readonly #resv = new Map<number, { from: number; to: number; point: number; gen: number }>();
  readonly #scratch = new Uint32Array(ENTRIES_PER_PAGE);

  // Writes issued per point, so `mark()` returns only when the writes before it have settled.
  readonly #inflight = new Map<number, number>();
  #drained: (() => void)[] = [];
  #marking: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(init: {
    header: SidecarHeader;
    map: BlockMap;
    store: ByteStore | undefined;
    durability: Durability;
    readOnly: boolean;
    reset: TrackerReset | undefined;
    fingerprint: TrackOptions['fingerprint'];
  }) {
    this.granularity = init.header.granularity;
    this.size = init.header.diskSize;
    this.#epoch = init.header.epoch;
    this.#point = init.header.point;
    this.#map = init.map;
    this.#store = init.store;
    this.durability = init.durability;
    this.readOnly = init.readOnly;
    this.reset = init.reset;
    this.#fingerprint = init.fingerprint;
    this.#pageGen = new Uint32Array(init.map.pageCount);
    this.#headerPages = init.header.pages;
    const sync = (init.store as SyncWritable | undefined)?.writeSync;
    if (init.durability === 'boot' && !init.readOnly && typeof sync === 'function') this.#writeSync = sync.bind(init.store);
  }

  /** Loads (or creates, or resets) the sidecar of `disk`. Used by `track()`. */
  static async open(disk: { size: number; readOnly: boolean }, opts: TrackOptions): Promise<Tracker> {
    if (opts.granularity !== undefined && !isValidGranularity(opts.granularity)) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `CBT granularity ${opts.granularity} is not a power of two from 512 to 1 GiB`);
    }
    const durability = opts.durability ?? 'boot';
    if (durability !== 'fsync' && durability !== 'boot') {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `CBT durability ${String(durability)} is not 'fsync' or 'boot'`);
    }
    const readOnly = disk.readOnly;
    let store = opts.store;
    if (!store && opts.path === undefined) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'track() needs a sidecar `path` or `store`');
    if (!store) store = await openSidecarFile(opts.path!, readOnly);
    if (store && !readOnly && (store.readOnly || typeof store.truncate !== 'function')) {
      await store.close().catch(() => {});
      throw new VdError('ERR_VD_INVALID_ARGUMENT', 'a CBT sidecar store for a writable disk must be writable and truncatable');
    }
    try {
      const { header, map, reset } = await load(store, disk.size, opts, durability, readOnly);
      const tracker = new Tracker({ header, map, store, durability, readOnly, reset, fingerprint: opts.fingerprint });
      if (reset) {
        debug('cbt: new epoch %s for %s: %s', uuidOf(header.epoch), store?.name, reset.message);
        if (resetChannel.hasSubscribers) resetChannel.publish({ epoch: uuidOf(header.epoch), ...reset, sidecar: store?.name });
      }
      return tracker;
    } catch (err) {
      await store?.close().catch(() => {});
      throw err;
    }
  }

  /** The epoch, as the uuid every change ID of it starts with. */
  get epoch(): string {
    return uuidOf(this.#epoch);
  }

  /** The open point: writes now are tagged with it. */
  get point(): number {
    return this.#point;
  }

  /**
   * Names the disk's state now and returns its change ID. Writes that had reached the tracker
   * before the call have settled when it resolves; later ones, and ones still queued in the Disk
   * (beyond its in-flight limit), count as changes after it: at worst an over-report. Call it
   * while the disk is quiet (at a snapshot) for a sharp point.
   */
  async mark(): Promise<string> {
    this.#checkWritable('mark');
    const next = this.#marking.then(() => this.#mark());
    this.#marking = next.catch(() => {});
    return next;
  }

  async #mark(): Promise<string> {
    this.#checkWritable('mark');
    const point = this.#point;
    if (point >= 0xffffffff) throw new VdError('ERR_VD_OUT_OF_RANGE', 'CBT point counter exhausted; reset tracking');
    this.#point = point + 1;
    this.#headerDirty = true;
    this.#syncWanted = true;
    await this.#waitFor(this.#nextGen);
    await this.#drain(point);
    return formatChangeId(this.#epoch, point);
  }

  /** The current change ID without starting a new point: "changes since" it are the ones still to come. */
  get latestChangeId(): string | undefined {
    return this.#point > 1 ? formatChangeId(this.#epoch, this.#point - 1) : undefined;
  }

  /**
   * The areas changed since `changeId` (or, for `*`, every allocated area, from the disk's
   * `base:allocation`), from `startOffset`, rounded out to the granularity and clipped to the
   * disk. A change ID of another epoch or disk, or one this tracker never handed out, fails with
   * ERR_VD_CBT_RESET: take a full backup.
   */
  async queryChangedAreas(changeId: string, opts: QueryOptions = {}, disk?: Disk): Promise<ChangedAreas> {
    if (this.#closed) throw new VdError('ERR_VD_CLOSED', 'query: the tracked disk is closed');
    const startOffset = opts.startOffset ?? 0;
    const maxAreas = opts.maxAreas ?? DEFAULT_MAX_AREAS;
    if (!Number.isSafeInteger(startOffset) || startOffset < 0 || startOffset > this.size) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `startOffset ${startOffset} is not within the disk (0…${this.size})`, {
        details: { startOffset, size: this.size },
      });
    }
    if (!Number.isSafeInteger(maxAreas) || maxAreas < 1) throw new VdError('ERR_VD_INVALID_ARGUMENT', `maxAreas ${maxAreas} < 1`);
    if (changeId === ALL_AREAS) {
      if (!disk) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'a "*" query needs the disk');
      return areasOfExtents(disk, BASE_ALLOCATION, (type) => type !== 'hole', startOffset, maxAreas);
    }
    const after = this.pointOf(changeId);
    if (opts.upTo !== undefined && this.pointOf(opts.upTo) < after) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `upTo ${opts.upTo} is older than ${changeId}`);
    }
    return this.areas(startOffset, this.size - startOffset, after, maxAreas);
  }

  /**
   * Changed areas in `[offset, offset + length)` whose counter n is past `after`, paged like
   * `queryChangedAreas`. The building block for queries and bitmap extents.
   */
  areas(offset: number, length: number, after: number, maxAreas: number): ChangedAreas {
    const g = this.granularity;
    const end = offset + length;
    if (length === 0) return { startOffset: offset, length: 0, areas: [] };
    const runs = this.#map.runs(Math.floor(offset / g), Math.ceil(end / g), after, maxAreas);
    const areas: ChangedArea[] = runs.map(([s, e]) => {
      const start = Math.max(s * g, offset);
      return { start, length: Math.min(e * g, end) - start };
    });
    const full = runs.length >= maxAreas;
    const last = areas[areas.length - 1];
    return { startOffset: offset, length: full && last ? last.start + last.length - offset : length, areas };
  }

  /** The point a change ID names, checked against this epoch; throws ERR_VD_CBT_RESET when it is not ours. */
  pointOf(changeId: string): number {
    const { epoch, point } = parseChangeId(changeId);
    if (epoch !== this.epoch) {
      throw new VdError(
        'ERR_VD_CBT_RESET',
        `change ID ${changeId} is not of this disk's tracking epoch ${this.epoch}; take a full backup`,
        {
          details: { changeId, epoch: this.epoch, reset: this.reset?.reason },
        },
      );
    }
    if (point >= this.#point) {
      throw new VdError(
        'ERR_VD_CBT_RESET',
        `change ID ${changeId} was never handed out by this tracker (newest point ${this.#point - 1})`,
        {
          details: { changeId, epoch: this.epoch },
        },
      );
    }
    return point;
  }

  // ---- the write path (called by TrackedSource) ----

  /**
   * Marks the blocks of `[offset, offset + length)` for the open point and resolves when the
   * marks are durable; `undefined` when they already are (the fast path, no await). The caller
   * must hold `enter()` until its write settles.
   */
  prepare(offset: number, length: number): Promise<void> | undefined {
    if (this.#failed) throw this.#failed;
    this.#checkWritable('write');
    const g = this.granularity;
    const first = Math.floor(offset / g);
    const last = Math.floor((offset + length - 1) / g);
    const point = this.#point;
    const map = this.#map;
    const pageGen = this.#pageGen;
    const next = this.#nextGen;
    let wait = 0;
    // A write that continues a run marked in this point is probably sequential: reserve ahead.
    const sequential = first > 0 && map.get(first - 1) === point;
    const committed = this.#committedGen;
    const allocated = map.allocated;
    let lastDirtied = false;
    for (let b = first; b <= last; b++) {
      const p = Math.floor(b / ENTRIES_PER_PAGE);
      if (map.get(b) !== point) {
        const r = this.#resv.get(p);
        if (r && r.point === point && b >= r.from && b < r.to) {
          // Already on the sidecar (or on its way there with commit r.gen).
          map.set(b, point);
          if (r.gen > committed && r.gen > wait) wait = r.gen;
          continue;
        }
        map.set(b, point);
        if (pageGen[p] !== next) {
          pageGen[p] = next;
          this.#dirty.add(p);
        }
        wait = next;
        if (b === last) lastDirtied = true;
      } else {
        const gen = pageGen[p]!;
        if (gen > committed && gen > wait) wait = gen;
      }
    }
    if (lastDirtied && sequential) this.#reserve(last, last - first + 1, point, next);
    // A page written for the first time in the epoch is counted in the header, written after it.
    if (map.allocated !== allocated) this.#headerDirty = true;
    if (wait === 0) return undefined;
    if (this.#writeSync) {
      this.#writePagesNow(this.#writeSync);
      return undefined;
    }
    return this.#waitFor(wait);
  }

  /**
   * Write-ahead reservation for sequential writers: the blocks after `last` (in its page) go
   * onto the sidecar with the write that marks `last`, so the writes that follow find their
   * marks already there and need no sidecar write of their own. The reserved blocks are not in
   * the memory map, so queries stay exact; only after a crash do they show up as changed (an
   * over-report, which is allowed). A clean close rewrites every page without them.
   */
  #reserve(last: number, span: number, point: number, gen: number): void {
    const p = Math.floor(last / ENTRIES_PER_PAGE);
    const to = Math.min(
      last + 1 + Math.min(Math.max(span * RESERVE_FACTOR, RESERVE_MIN), RESERVE_MAX),
      (p + 1) * ENTRIES_PER_PAGE,
      this.#map.blocks,
    );
    if (to > last + 1) this.#resv.set(p, { from: last + 1, to, point, gen });
  }

  /** Page `p` as it goes onto the sidecar: its counters, plus its reservation if still current. */
  #encode(p: number, out: Uint8Array): void {
    const entries = this.#map.page(p)!;
    const r = this.#resv.get(p);
    if (r && r.point !== this.#point) this.#resv.delete(p); // stale (a mark came since): this write drops it
    if (!r || r.point !== this.#point) {
      encodePage(this.#epoch, p, entries, out);
      return;
    }
    const withResv = this.#scratch;
    withResv.set(entries);
    const base = p * ENTRIES_PER_PAGE;
    for (let b = r.from; b < r.to; b++) if (withResv[b - base]! < r.point) withResv[b - base] = r.point;
    encodePage(this.#epoch, p, withResv, out);
  }

  /**
   * `boot` durability on a store that writes synchronously: a mark only has to reach the page
   * cache before its write is issued, and a 4 KiB pwrite does that in microseconds, without
   * queueing behind the data writes in libuv's pool. Every page goes this way (never through
   * the commit loop), so an older copy of a page can never land after a newer one.
   */
  #writePagesNow(writeSync: (position: number, data: Uint8Array) => void): void {
    const pages = [...this.#dirty].sort((a, b) => a - b);
    this.#dirty.clear();
    const gen = this.#nextGen++;
    const buf = this.#pageBuf;
    try {
      for (const p of pages) {
        this.#encode(p, buf);
        writeSync(pageOffset(p), buf);
      }
      const count = this.#map.allocated;
      if (count !== this.#headerPages) {
        // Once per page per epoch. The commit loop may still rewrite the header with an older
        // count; a count too low only weakens the zeroed-page check until the next header.
        writeSync(0, encodeHeader(this.#header(0, count)));
        this.#headerPages = count;
      }
    } catch (err) {
      this.#fail(err);
      throw this.#failed;
    }
    // Nothing async is pending for these pages; later writes to them need no wait.
    for (const p of pages) {
      if (this.#pageGen[p] === gen) this.#pageGen[p] = 0;
      const r = this.#resv.get(p);
      if (r && r.gen === gen) r.gen = 0;
    }
  }

  /** Counts a write as issued under the open point; returns the point to pass to `leave`. */
  enter(): number {
    const p = this.#point;
    this.#inflight.set(p, (this.#inflight.get(p) ?? 0) + 1);
    return p;
  }

  leave(point: number): void {
    const n = (this.#inflight.get(point) ?? 1) - 1;
    if (n > 0) this.#inflight.set(point, n);
    else this.#inflight.delete(point);
    if (this.#drained.length > 0) {
      const waiting = this.#drained;
      this.#drained = [];
      for (const w of waiting) w();
    }
  }

  /** Resolves when no write issued under a point <= `point` is in flight. */
  async #drain(point: number): Promise<void> {
    for (;;) {
      let busy = false;
      for (const p of this.#inflight.keys()) if (p <= point) busy = true;
      if (!busy) return;
      await new Promise<void>((resolve) => this.#drained.push(resolve));
    }
  }

  #waitFor(gen: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ gen, resolve, reject });
      if (!this.#running) {
        this.#running = true;
        this.#committing = this.#commitLoop();
      }
    });
  }

  /** Writes dirty pages (and the header), syncs per `durability`, wakes the waiters; repeats while there is more. */
  async #commitLoop(): Promise<void> {
    const store = this.#store!;
    try {
      while (this.#dirty.size > 0 || this.#headerDirty || this.#waiters.some((w) => w.gen > this.#committedGen)) {
        const gen = this.#nextGen++;
        const pages = [...this.#dirty].sort((a, b) => a - b);
        this.#dirty.clear();
        const headerPages = this.#map.allocated;
        const header = this.#headerDirty ? encodeHeader(this.#header(0, headerPages)) : undefined;
        this.#headerDirty = false;
        const fsync = this.durability === 'fsync';
        /** A mark's commit: its header (the new point) must be on stable storage. */
        const marking = this.#syncWanted;
        this.#syncWanted = false;
        // Serialize now, synchronously: a change made while this commit writes belongs to the next one.
        const buf = new Uint8Array(pages.length * PAGE_SIZE);
        pages.forEach((p, i) => {
          this.#encode(p, buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
        });
        try {
          const writes: Promise<void>[] = [];
          for (let i = 0; i < pages.length; ) {
            let j = i + 1;
            while (j < pages.length && pages[j] === pages[j - 1]! + 1) j++;
            writes.push(store.write(pageOffset(pages[i]!), buf.subarray(i * PAGE_SIZE, j * PAGE_SIZE)));
            i = j;
          }
          await settle(writes);
          // The header may count this commit's pages, so it goes after them, and with `fsync`
          // after they are synced if it counts new ones: neither a killed process nor a power
          // loss leaves it counting more pages than the file holds.
          const pagesSynced = header !== undefined && fsync && pages.length > 0 && headerPages !== this.#headerPages;
          if (pagesSynced) await store.flush();
          if (header) await store.write(0, header);
          if (marking || (fsync && !pagesSynced)) await store.flush();
        } catch (err) {
          this.#fail(err);
          return;
        }
        this.#committedGen = gen;
        if (header) this.#headerPages = headerPages;
        const still: Waiter[] = [];
        for (const w of this.#waiters) {
          if (w.gen <= gen) w.resolve();
          else still.push(w);
        }
        this.#waiters = still;
      }
    } finally {
      // Runs right after the loop's last check, with no await between: a waiter that arrives
      // later finds the loop stopped and starts another.
      this.#running = false;
    }
  }

  /** A mark that cannot be made durable: refuse every later write, so none goes unrecorded. */
  #fail(err: unknown): void {
    this.#failed = new VdError('ERR_VD_IO', `CBT sidecar write failed; the tracked disk refuses writes until reopened`, {
      cause: err,
    });
    for (const w of this.#waiters) w.reject(this.#failed);
    this.#waiters = [];
  }

  /** The header as written now; `pages` must count only pages already on the file (see `#commitLoop`). */
  #header(flags: number, pages: number, fingerprint = ''): SidecarHeader {
    return {
      flags: flags | (this.durability === 'fsync' ? FLAG_SYNCED : 0),
      granularity: this.granularity,
      point: this.#point,
      diskSize: this.size,
      epoch: this.#epoch,
      bootId: flags & FLAG_CLEAN ? new Uint8Array(16) : (currentBootId() ?? new Uint8Array(16)),
      fingerprint,
      pages,
    };
  }

  /** After the disk closed: everything synced, then the clean flag with the disk's fingerprint. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const store = this.#store;
    if (!store) return;
    try {
      if (!this.readOnly && !this.#failed) {
        await this.#marking;
        // Rewrite reserved pages without their reservations: a clean sidecar is exact.
        for (const p of this.#resv.keys()) this.#dirty.add(p);
        this.#resv.clear();
        if (this.#dirty.size > 0) await this.#waitFor(this.#nextGen);
        await this.#committing;
        if (!this.#failed) {
          await store.flush();
          const fingerprint = this.#fingerprint ? await this.#fingerprint() : '';
          await store.write(0, encodeHeader(this.#header(FLAG_CLEAN, this.#map.allocated, fingerprint)));
          await store.flush();
        }
      }
    } finally {
      await store.close();
    }
  }

  /** Abortive: close the sidecar as it is, unclean (the next open treats it as a crash). */
  async destroy(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#committing?.catch(() => {});
    await this.#store?.close().catch(() => {});
  }

  #checkWritable(op: string): void {
    if (this.#closed) throw new VdError('ERR_VD_CLOSED', `${op}: change tracker is closed`);
    if (this.readOnly) throw new VdError('ERR_VD_READ_ONLY', `${op}: the tracked disk is read-only`);
  }
}

/** A sidecar store that can also write synchronously (ours can; a host's store may). */
interface SyncWritable {
  writeSync?(position: number, data: Uint8Array): void;
}

async function settle(parts: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Reads and judges the sidecar; starts a new epoch (and, writable, rewrites it) when it cannot be trusted. */
async function load(
  store: ByteStore | undefined,
  diskSize: number,
  opts: TrackOptions,
  durability: Durability,
  readOnly: boolean,
): Promise<{ header: SidecarHeader; map: BlockMap; reset: TrackerReset | undefined }> {
  const fileSize = store ? await store.size() : 0;
  let reset: TrackerReset | undefined;
  let header: SidecarHeader | undefined;
  let map: BlockMap | undefined;
  if (fileSize === 0) {
    reset = { reason: 'created', message: 'no sidecar yet; tracking starts now' };
  } else {
    try {
      const head = new Uint8Array(HEADER_SIZE);
      const n = await readAll(store!, 0, head);
      if (n < HEADER_SIZE) throw new VdError('ERR_VD_CORRUPT', `sidecar is ${fileSize} bytes, shorter than its header`);
      header = decodeHeader(head);
      reset = await judge(header, diskSize, opts);
      if (!reset) map = await loadPages(store!, header, fileSize);
    } catch (err) {
      if (!(err instanceof VdError) || err.code !== 'ERR_VD_CORRUPT') throw err;
      reset = { reason: 'damaged', message: `sidecar is damaged (${err.message})` };
    }
  }
  const granularity = opts.granularity ?? header?.granularity ?? DEFAULT_GRANULARITY;
  if (Math.ceil(diskSize / granularity) > MAX_BLOCKS) {
    throw new VdError(
      'ERR_VD_INVALID_ARGUMENT',
      `a ${diskSize}-byte disk has more than ${MAX_BLOCKS} blocks of ${granularity} bytes; track it at a coarser granularity`,
      { details: { size: diskSize, granularity } },
    );
  }
  if (reset || !header || !map) {
    header = {
      flags: 0,
      granularity,
      point: 1,
      diskSize,
      epoch: new Uint8Array(randomBytes(16)),
      bootId: new Uint8Array(16),
      fingerprint: '',
      pages: 0,
    };
    map = new BlockMap(Math.ceil(diskSize / granularity));
  } else {
    // After a crash, pages may carry the point a mark() was opening when the header was not yet written.
    header.point = Math.max(header.point, map.maxPoint());
  }
  if (!readOnly && store) {
    header.flags = durability === 'fsync' ? FLAG_SYNCED : 0;
    header.bootId = currentBootId() ?? new Uint8Array(16);
    header.fingerprint = '';
    header.pages = map.allocated;
    if (reset) {
      // Pages of the old epoch must be gone before the new header can be found; then the file
      // takes its full length at once (sparse), so a later cut is told apart from "no changes".
      await store.truncate!(0);
      await store.flush();
      await store.truncate!(pageOffset(map.pageCount));
    }
    await store.write(0, encodeHeader(header));
    await store.flush();
  }
  return { header, map, reset };
}

/** Whether a well-formed header can be trusted for this disk now; a reset when not. */
async function judge(h: SidecarHeader, diskSize: number, opts: TrackOptions): Promise<TrackerReset | undefined> {
  if (h.diskSize !== diskSize) {
    return { reason: 'size-changed', message: `the disk is ${diskSize} bytes; the sidecar tracked ${h.diskSize}` };
  }
  if (opts.granularity !== undefined && opts.granularity !== h.granularity) {
    return { reason: 'granularity-changed', message: `granularity ${opts.granularity} asked for; the sidecar has ${h.granularity}` };
  }
  if (h.flags & FLAG_CLEAN) {
    const now = opts.fingerprint ? await opts.fingerprint() : '';
    if (now !== h.fingerprint) {
      return {
        reason: 'changed-outside',
        message: `the disk's fingerprint ${JSON.stringify(now)} differs from ${JSON.stringify(h.fingerprint)} recorded at the last clean close`,
      };
    }
    return undefined;
  }
  if (h.flags & FLAG_SYNCED) return undefined;
  const boot = currentBootId();
  if (boot && h.bootId.some((x) => x !== 0) && Buffer.compare(boot, h.bootId) === 0) return undefined;
  return { reason: 'unclean', message: 'the sidecar was left open without synced marks and the host has restarted since' };
}

async function loadPages(store: ByteStore, header: SidecarHeader, fileSize: number): Promise<BlockMap> {
  const map = new BlockMap(Math.ceil(header.diskSize / header.granularity));
  // A sidecar always has its full length (created sparse): pages cut off the end would read as
  // "never changed", an under-report, so any other length is damage.
  const end = pageOffset(map.pageCount);
  if (fileSize !== end) {
    throw new VdError(
      'ERR_VD_CORRUPT',
      `sidecar is ${fileSize} bytes; its header says ${end} (cut short, or written by @vd/cbt 0.1, which left trailing pages out)`,
      {
        details: { fileSize, expected: end },
      },
    );
  }
  let written = 0;
  const chunk = new Uint8Array(Math.min(LOAD_CHUNK, Math.max(PAGE_SIZE, fileSize - HEADER_SIZE)));
  for (let at = HEADER_SIZE; at < fileSize; at += chunk.length) {
    const want = Math.min(chunk.length, fileSize - at);
    const got = await readAll(store, at, chunk.subarray(0, want));
    if (got < want) throw new VdError('ERR_VD_CORRUPT', 'sidecar shrank while being read');
    for (let o = 0; o < want; o += PAGE_SIZE) {
      const page = chunk.subarray(o, o + PAGE_SIZE);
      if (isZeroPage(page)) continue;
      written++;
      const index = (at - HEADER_SIZE + o) / PAGE_SIZE;
      const entries = decodePage(header.epoch, index, page);
      if (entries) map.load(index, entries);
    }
  }
  // A written page never goes back to zeros; one that did was zeroed or punched out in place,
  // and its changes would read as none.
  if (written < header.pages) {
    throw new VdError(
      'ERR_VD_CORRUPT',
      `sidecar holds ${written} written pages; its header counts ${header.pages} (pages were zeroed or punched out)`,
      { details: { written, counted: header.pages } },
    );
  }
  return map;
}

async function readAll(store: ByteStore, position: number, into: Uint8Array): Promise<number> {
  let done = 0;
  while (done < into.length) {
    const n = await store.read(position + done, into.subarray(done));
    if (n <= 0) break;
    done += n;
  }
  return done;
}
