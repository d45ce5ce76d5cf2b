import { Buffer } from 'node:buffer';
import { inflateSync } from 'node:zlib';
import { zeroBuffer } from '../../copy/zeroes.js';
import { VdError } from '../../errors.js';
import { InflateLost, type InflateResult, inflatePool } from '../../inflate-pool.js';
import type { ByteStore } from '../../spec.js';
import { readFully } from '../raw.js';
import { GTE_ZEROED, GTES_PER_GT, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR } from './constants.js';
import type { Fallback, Placement, Run, VmdkExtent } from './extent.js';
import { cachedLoad, HOLE, placeMapped, readMapped, readOnlyError, ZEROES_AT } from './extent.js';
import {
  encodeSparseHeader,
  gdEntries,
  grainHeaderSize,
  HEADER_SIZE,
  hasMarkers,
  hasRedundantGd,
  hasZeroedGte,
  isCompressed,
  type Marker,
  parseMarker,
  parseSparseHeader,
  type SparseHeader,
} from './header.js';

const GT_BYTES = GTES_PER_GT * 4;

/** A compressed grain a read needs: `n` bytes from `within` in the grain go to `dst` of the caller's buffer. */
interface CompressedPart {
  g: number;
  gte: number;
  dst: number;
  within: number;
  n: number;
}
const GT_SECTORS = GT_BYTES / SECTOR;
/** Read-only extents keep at most this many grain tables (8 MiB); writable ones keep all they touched. */
const GT_CACHE = 4096;
/** Decompressed grains kept for small, unaligned reads of compressed extents. */
const GRAIN_CACHE = 32;
/** Largest single append of newly allocated grains. */
const MAX_APPEND = 4 << 20;
/** Grains a `status` call looks at before returning what it has. */
const STATUS_GRAINS = 1 << 16;

export function readU32Array(bytes: Uint8Array, count: number): Uint32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, count * 4);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getUint32(i * 4, true);
  return out;
}

export function encodeU32Array(values: Uint32Array, padTo = SECTOR): Uint8Array {
  const bytes = new Uint8Array(Math.ceil((values.length * 4) / padTo) * padTo);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < values.length; i++) view.setUint32(i * 4, values[i]!, true);
  return bytes;
}

function corrupt(name: string, message: string, details: Record<string, unknown> = {}): VdError {
  return new VdError('ERR_VD_CORRUPT', `${name}: ${message}`, { details: { file: name, ...details } });
}

/** A one-at-a-time section: grain allocation, grain-table placement and flush never interleave. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }
}

/** A sparse extent's header as read from a file of `fileSize` bytes (see `readEffectiveHeader`). */
export interface EffectiveHeader {
  /** The header to use: the footer of a stream written with GD_AT_END, else the first. */
  header: SparseHeader;
  /** Sector 0's header. */
  first: SparseHeader;
  /** A stream cut short, read with `recover`: its grains are found by scanning markers. */
  footerMissing?: boolean;
  fileSize: number;
}

/**
 * Reads the header, and for a stream written with GD_AT_END the footer that supersedes it. With
 * `recover`, a stream whose footer is missing (cut short) comes back with `footerMissing` and
 * its first header, so the caller can rebuild the grain map by scanning markers. `head`, the
 * file's first bytes when the caller read them already, spares reading sector 0 again (they are
 * parsed and checked all the same).
 */
export async function readEffectiveHeader(
  store: ByteStore,
  name: string,
  fileSize: number,
  recover = false,
  head?: Uint8Array,
): Promise<EffectiveHeader> {
  if (head === undefined || head.length < HEADER_SIZE) {
    head = new Uint8Array(HEADER_SIZE);
    await readFully(store, 0, head);
  }
  const first = parseSparseHeader(head, name);
  if (!first.gdAtEnd) return { header: first, first, fileSize };
  // VMware stream: [footer marker][footer = header with the real gdOffset][end-of-stream marker].
  // A partial last sector (some copies pad oddly) is ignored: the footer ends on a sector boundary.
  const end = Math.floor(fileSize / SECTOR) * SECTOR;
  const footerless = recover && hasMarkers(first) ? { header: first, first, footerMissing: true, fileSize } : undefined;
  const missing = (why: string) => {
    if (footerless) return footerless;
    throw corrupt(name, `${why} (truncated?); open it with the \`recover\` option to read, read-only, the grains written before the cut`, {
      recoverable: hasMarkers(first),
    });
  };
  if (end < 4 * SECTOR) return missing('stream is too short to hold a footer');
  const tail = new Uint8Array(3 * SECTOR);
  await readFully(store, end - 3 * SECTOR, tail);
  // A stream cut inside a grain ends in compressed bytes, which rarely even parse as a marker.
  const marker = (() => {
    try {
      return parseMarker(tail, name);
    } catch {
      return undefined;
    }
  })();
  if (marker?.size !== 0 || marker.type !== MARKER_FOOTER) return missing('stream has no footer where the end of the file should hold it');
  let footer: SparseHeader;
  try {
    footer = parseSparseHeader(tail.subarray(SECTOR, 2 * SECTOR), name);
  } catch (err) {
    if (footerless) return footerless;
    throw err;
  }
  if (footer.gdAtEnd) return missing('stream footer does not say where the grain directory is');
  return { header: footer, first, fileSize };
}

/**
 * Rebuilds the grain tables of a stream by walking its markers from the first grain: each grain
 * marker names its LBA, metadata markers (tables, directory, footer) are skipped, and the walk
 * stops at the end-of-stream marker or at the first record that is cut short or makes no sense.
 * Tables are keyed by table index; memory is bounded by the file (one entry per grain found).
 */
async function scanStream(store: ByteStore, name: string, header: SparseHeader, fileSize: number): Promise<Map<number, Uint32Array>> {
  const gb = header.grainSize * SECTOR;
  const tables = new Map<number, Uint32Array>();
  const end = Math.floor(fileSize / SECTOR);
  const CHUNK = 1 << 20;
  let buf = new Uint8Array(0);
  let bufAt = 0; // sector of buf[0]
  const sectorAt = async (s: number): Promise<Uint8Array> => {
    if (s < bufAt || (s - bufAt + 1) * SECTOR > buf.length) {
      bufAt = s;
      buf = new Uint8Array(Math.min(CHUNK, (end - s) * SECTOR));
      await readFully(store, s * SECTOR, buf);
    }
    return buf.subarray((s - bufAt) * SECTOR, (s - bufAt + 1) * SECTOR);
  };
  let s = Math.max(1, header.overHead);
  while (s < end) {
    const sector = await sectorAt(s);
    let marker: Marker;
    try {
      marker = parseMarker(sector, name);
    } catch {
      break; // a value past 2^53: no record of this file
    }
    const { value, size, type } = marker;
    if (size === 0) {
      if (type === MARKER_EOS || value > end) break;
      if (type !== MARKER_GT && type !== MARKER_GD && type !== MARKER_FOOTER) break;
      s += 1 + value;
      continue;
    }
    // A grain marker: `value` is the grain's LBA.
    const sectors = Math.ceil((grainHeaderSize(true) + size) / SECTOR);
    if (size > gb * 2 + 1024 || s + sectors > end || value % header.grainSize !== 0 || value >= header.capacity) break;
    const g = value / header.grainSize;
    const t = Math.floor(g / GTES_PER_GT);
    let gt = tables.get(t);
    if (!gt) {
      gt = new Uint32Array(GTES_PER_GT);
      tables.set(t, gt);
    }
    gt[g % GTES_PER_GT] = s; // a later copy of a grain wins, as a stream reader would see it
    s += sectors;
  }
  if (tables.size === 0 && s === Math.max(1, header.overHead))
    throw corrupt(name, 'stream holds no readable grain marker after its header', { sector: s });
  return tables;
}

export interface SparseOpenOptions {
  name: string;
  writable: boolean;
  /** Read a stream cut short (no footer) by scanning its markers; read-only. */
  recover?: boolean | undefined;
  /** Bytes the descriptor gives the extent; the header's capacity when absent. */
  size?: number;
  /**
   * The header as `readEffectiveHeader` read it from this same store (with the same `recover`),
   * when opening its descriptor did already: it is not read again.
   */
  header?: EffectiveHeader | undefined;
}

/**
 * A hosted sparse extent (monolithicSparse, twoGbMaxExtentSparse, streamOptimized): grain
 * directory → grain tables → grains, compressed or not. Writes append grains and keep grain-table
 * changes in memory until `flush`, which makes the data durable before any table that points to
 * it is written, so a crash never leaves a table pointing at unwritten data.
 */
export class SparseExtent implements VmdkExtent {
  readonly kind = 'SPARSE';
  readonly size: number;
  readonly writable: boolean;
  readonly grainBytes: number;
  readonly header: SparseHeader;
  readonly #store: ByteStore;
  readonly #name: string;
  readonly #capBytes: number;
  readonly #gd: Uint32Array;
  readonly #rgd: Uint32Array | undefined;
  /** Redundant grain tables loaded to stand in for damaged entries of the primary ones (read-only extents). */
  readonly #rgts = new Map<number, Promise<Uint32Array>>();
  readonly #compressed: boolean;
  readonly #markers: boolean;
  readonly #zeroed: boolean;
  #fileSize: number;
  readonly #gts = new Map<number, Uint32Array | Promise<Uint32Array>>();
  readonly #dirtyGts = new Set<number>();
  /** Tables were placed (directory entries set) that the directory on disk does not list yet. */
  #gdDirty = false;
  readonly #grainCache = new Map<number, Uint8Array | Promise<Uint8Array>>();
  readonly #mutex = new Mutex();
  #dirty: Promise<void> | undefined;
  /** The inflate pool was released (compressed extents hold it while open). */
  #released = false;

  private constructor(
    store: ByteStore,
    header: SparseHeader,
    gd: Uint32Array,
    rgd: Uint32Array | undefined,
    fileSize: number,
    opts: SparseOpenOptions,
  ) {
    this.#store = store;
    this.#name = opts.name;
    this.header = header;
    this.grainBytes = header.grainSize * SECTOR;
    this.#capBytes = header.capacity * SECTOR;
    this.size = opts.size ?? this.#capBytes;
    this.#gd = gd;
    this.#rgd = rgd;
    this.#compressed = isCompressed(header);
    this.#markers = hasMarkers(header);
    this.#zeroed = hasZeroedGte(header);
    this.#fileSize = fileSize;
    // Compressed grains cannot be rewritten in place, and v3 without compression is a hosted CBT
    // disk whose tracking file we do not keep up to date: both are opened read-only, as qemu does.
    this.writable = opts.writable && !store.readOnly && !this.#compressed && header.version !== 3;
    if (this.#compressed) inflatePool.acquire();
  }

  static async open(store: ByteStore, opts: SparseOpenOptions): Promise<SparseExtent> {
    const { header, footerMissing, fileSize } =
      opts.header ?? (await readEffectiveHeader(store, opts.name, await store.size(), opts.recover === true));
    const n = gdEntries(header);
    if (footerMissing) {
      const tables = await scanStream(store, opts.name, header, fileSize);
      // Directory entries only say which tables exist: the tables are all in memory already.
      const gd = new Uint32Array(n);
      for (const t of tables.keys()) gd[t] = 1;
      const extent = new SparseExtent(store, header, gd, undefined, fileSize, { ...opts, writable: false });
      for (const [t, gt] of tables) extent.#gts.set(t, gt);
      return extent;
    }
    const primary = await SparseExtent.#readGd(store, opts.name, header.gdOffset, n, fileSize, 'grain directory');
    const redundant = hasRedundantGd(header)
      ? await SparseExtent.#readGd(store, opts.name, header.rgdOffset, n, fileSize, 'redundant grain directory')
      : undefined;
    const rgd = redundant && 'gd' in redundant ? redundant : undefined;
    let gd: Uint32Array;
    let recovered = false;
    if ('gd' in primary) {
      gd = primary.gd;
      // An entry pointing past the end is taken from the redundant copy when that one is sound.
      for (const i of primary.bad) {
        const alt = rgd && !rgd.bad.includes(i) ? rgd.gd[i]! : 0;
        if (alt === 0) throw corrupt(opts.name, `grain directory entry ${i} points past the end of the file`, { entry: i, sector: gd[i] });
        gd[i] = alt;
        recovered = true;
      }
    } else if (rgd && rgd.bad.length === 0) {
      // The primary directory is unreadable or lies outside the file: read through the redundant one.
      gd = Uint32Array.from(rgd.gd);
      recovered = true;
    } else throw primary.error;
    // Partly read through the redundant copy (the primary is damaged): read-only; `checkVmdk --repair` mends the primary.
    return new SparseExtent(store, header, gd, rgd?.gd, fileSize, { ...opts, writable: opts.writable && !recovered });
  }

  /**
   * Reads a directory. One that lies outside the file or cannot be read comes back as `error`, so
   * the other copy can be tried; entries pointing past the end are listed in `bad`.
   */
  static async #readGd(
    store: ByteStore,
    name: string,
    sector: number,
    n: number,
    fileSize: number,
    what: string,
  ): Promise<{ gd: Uint32Array; bad: number[] } | { error: unknown }> {
    if (n === 0) return { gd: new Uint32Array(0), bad: [] };
    const at = sector * SECTOR;
    if (sector === 0 || at + n * 4 > fileSize)
      return { error: corrupt(name, `${what} at sector ${sector} (${n} entries) lies outside the file`, { sector, entries: n }) };
    const bytes = new Uint8Array(n * 4);
    try {
      await readFully(store, at, bytes);
    } catch (error) {
      return { error };
    }
    const gd = readU32Array(bytes, n);
    const bad: number[] = [];
    for (let i = 0; i < n; i++) {
      const e = gd[i]!;
      if (e !== 0 && e * SECTOR + GT_BYTES > fileSize) bad.push(i);
    }
    return { gd, bad };
  }

  get fileSize(): number {
    return this.#fileSize;
  }

  /** The grain table `i`, loading it once; undefined where the directory has none. */
  #gt(i: number): Uint32Array | Promise<Uint32Array> | undefined {
    const cached = this.#gts.get(i);
    if (cached) return cached;
    const sector = this.#gd[i];
    if (sector === undefined || sector === 0) return undefined;
    const load = this.#readTable(sector);
    load.then(
      (gt) => {
        if (this.#gts.get(i) === load) this.#gts.set(i, gt);
      },
      () => this.#gts.delete(i),
    );
    if (!this.writable && this.#gts.size >= GT_CACHE) {
      const oldest = this.#gts.keys().next().value;
      if (oldest !== undefined) this.#gts.delete(oldest);
    }
    this.#gts.set(i, load);
    return load;
  }

  /**
   * Grain table entry of grain `g` (0 when no table covers it). On a read-only extent with a
   * redundant directory, an entry that points past the end of the file (or a table that cannot be
   * read) is taken from the redundant table instead, when that one holds a sound entry.
   */
  async #gte(g: number): Promise<number> {
    const i = Math.floor(g / GTES_PER_GT);
    const t = this.#gt(i);
    if (t === undefined) return 0;
    if (this.writable || !this.#rgd) {
      const gt = t instanceof Uint32Array ? t : await t;
      return gt[g % GTES_PER_GT]!;
    }
    let gte: number | undefined;
    let failure: unknown;
    try {
      gte = (t instanceof Uint32Array ? t : await t)[g % GTES_PER_GT]!;
      if (this.#grainOk(gte)) return gte;
    } catch (err) {
      failure = err;
    }
    const alt = await this.#redundantGte(i, g).catch(() => undefined);
    if (alt !== undefined && this.#grainOk(alt)) return alt;
    if (gte === undefined) throw failure;
    return gte;
  }

  #grainOk(gte: number): boolean {
    return gte === 0 || ((gte !== GTE_ZEROED || this.#zeroed) && gte * SECTOR < this.#fileSize);
  }

  /** Entry `g` of redundant table `i`, or undefined when there is none (or it is the primary's own). */
  async #redundantGte(i: number, g: number): Promise<number | undefined> {
    const sector = this.#rgd?.[i];
    if (!sector || sector === this.#gd[i] || sector * SECTOR + GT_BYTES > this.#fileSize) return undefined;
    const gt = await cachedLoad(this.#rgts, i, GT_CACHE, () => this.#readTable(sector));
    return gt[g % GTES_PER_GT];
  }

  async #readTable(sector: number): Promise<Uint32Array> {
    const bytes = new Uint8Array(GT_BYTES);
    await readFully(this.#store, sector * SECTOR, bytes);
    return readU32Array(bytes, GTES_PER_GT);
  }

  #checkGrain(g: number, gte: number): void {
    if (gte === GTE_ZEROED && !this.#zeroed) throw corrupt(this.#name, `grain ${g} points into the header (sector 1)`, { grain: g });
    if (gte * SECTOR >= this.#fileSize)
      throw corrupt(this.#name, `grain ${g} points past the end of the file (sector ${gte})`, { grain: g, sector: gte });
  }

  /** Grain `g`'s byte offset in the store, HOLE or ZEROES_AT (`readMapped`'s `locate`); not for compressed grains. */
  readonly #locate = async (g: number): Promise<number> => {
    const gte = await this.#gte(g);
    if (gte === 0) return HOLE;
    if (gte === GTE_ZEROED && this.#zeroed) return ZEROES_AT;
    this.#checkGrain(g, gte);
    return gte * SECTOR;
  };

  read(offset: number, into: Uint8Array, fallback: Fallback): Promise<void> {
    if (!this.#compressed) return readMapped(this.#store, offset, into, this.grainBytes, this.#capBytes, this.#locate, fallback);
    return this.#readCompressedRange(offset, into, fallback);
  }

  /** Compressed grains can be read, but never sent from the file as they are. */
  placements(offset: number, length: number): Promise<Placement[] | undefined> {
    if (this.#compressed) return Promise.resolve(undefined);
    return placeMapped(this.#store, offset, length, this.grainBytes, this.#capBytes, this.#locate);
  }

  async #readCompressedRange(offset: number, into: Uint8Array, fallback: Fallback): Promise<void> {
    const gb = this.grainBytes;
    const tasks: Promise<void>[] = [];
    // A run of consecutive holes that one fallback call serves.
    let run: { dst: number; src: number; len: number } | undefined;
    const flushRun = () => {
      if (!run) return;
      tasks.push(fallback(run.src, into.subarray(run.dst, run.dst + run.len)));
      run = undefined;
    };
    let done = 0;
    let failure: unknown;
    // Compressed grains of this request, read in file-adjacent batches (all batches in flight at once), each inflated as it arrives.
    const compressed: CompressedPart[] = [];
    try {
      while (done < into.length) {
        const pos = offset + done;
        if (pos >= this.#capBytes) {
          // Past the header's capacity but inside the descriptor's size: nothing is stored there.
          flushRun();
          into.fill(0, done);
          break;
        }
        const g = Math.floor(pos / gb);
        const within = pos - g * gb;
        const n = Math.min(gb - within, into.length - done, this.#capBytes - pos);
        const gte = await this.#gte(g);
        if (gte === 0) {
          if (run && run.src + run.len === pos) run.len += n;
          else {
            flushRun();
            run = { dst: done, src: pos, len: n };
          }
        } else if (gte === GTE_ZEROED && this.#zeroed) {
          flushRun();
          into.fill(0, done, done + n);
        } else {
          this.#checkGrain(g, gte);
          flushRun();
          const dst = done;
          if (this.#grainCache.has(g)) tasks.push(this.#grain(g, gte).then((grain) => into.set(grain.subarray(within, within + n), dst)));
          else compressed.push({ g, gte, dst, within, n });
        }
        done += n;
      }
      flushRun();
      if (compressed.length > 0) tasks.push(...this.#readCompressed(compressed, into));
    } catch (err) {
      failure = err;
    }
    // Every started read settles before we return or throw: the caller's buffer is not written later.
    const results = await Promise.allSettled(tasks);
    if (failure !== undefined) throw failure;
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /** Where grain `g`'s record ends at the latest: the next grain of its table when that follows closely. */
  #recordEnd(g: number, gte: number): number {
    const limit = this.grainBytes * 2 + 1024 + SECTOR;
    const next = this.#gts.get(Math.floor((g + 1) / GTES_PER_GT));
    let end = gte * SECTOR + limit;
    if (next instanceof Uint32Array) {
      const ng = next[(g + 1) % GTES_PER_GT]!;
      if (ng > gte && (ng - gte) * SECTOR <= limit) end = ng * SECTOR;
    }
    return Math.min(end, this.#fileSize);
  }

  /**
   * Streams store grains back to back: one store read serves a run of them (at most 8 MiB). A
   * request whose grains inflate to enough bytes is inflated on the worker pool, one batch per
   * store read (so batches are cut smaller), which keeps the event loop free and uses the cores.
   */
  #readCompressed(parts: CompressedPart[], into: Uint8Array): Promise<void>[] {
    parts.sort((a, b) => a.gte - b.gte);
    const pooled = inflatePool.worthIt(parts.length * this.grainBytes);
    const batchGrains = Math.max(1, Math.floor(inflatePool.maxBatchBytes / this.grainBytes));
    const tasks: Promise<void>[] = [];
    let i = 0;
    while (i < parts.length) {
      const start = parts[i]!.gte * SECTOR;
      let end = this.#recordEnd(parts[i]!.g, parts[i]!.gte);
      let j = i + 1;
      while (j < parts.length && !(pooled && j - i >= batchGrains)) {
        const p = parts[j]!;
        const e = this.#recordEnd(p.g, p.gte);
        if (p.gte * SECTOR > end + 8 * SECTOR || e - start > MAX_APPEND * 2) break;
        end = Math.max(end, e);
        j++;
      }
      const group = parts.slice(i, j);
      tasks.push(pooled ? this.#inflatePooled(group, start, end, into) : this.#inflateRun(group, start, end, into));
      i = j;
    }
    return tasks;
  }

  /** One store read of a run of grain records, inflated here. */
  async #inflateRun(group: CompressedPart[], start: number, end: number, into: Uint8Array): Promise<void> {
    // Not zero-filled: the read overwrites it, and readFully zero-fills a short tail itself.
    const buf = Buffer.allocUnsafeSlow(end - start);
    await readFully(this.#store, start, buf);
    await this.#inflateBatchHere(group, buf, start, into);
  }

  /**
   * Inflates grains whose records start in `buf` (read from `start`) into the caller's buffer, one
   * after another: a failure stops the rest, so nothing writes into `into` after this settles.
   */
  async #inflateBatchHere(batch: CompressedPart[], buf: Uint8Array, start: number, into: Uint8Array): Promise<void> {
    for (const p of batch) {
      const grain = await this.#inflateGrain(p.g, p.gte, buf.subarray(p.gte * SECTOR - start));
      if (p.n < this.grainBytes) this.#remember(p.g, grain);
      into.set(grain.subarray(p.within, p.within + p.n), p.dst);
    }
  }

  /** One store read of a run of grain records, inflated as one batch on the worker pool. */
  async #inflatePooled(group: CompressedPart[], start: number, end: number, into: Uint8Array): Promise<void> {
    const gb = this.grainBytes;
    const buf = inflatePool.sourceBuffer(end - start);
    await readFully(this.#store, start, buf);
    // Headers are checked here, as inline; a record longer than the read (damaged) goes inline.
    const batch: CompressedPart[] = [];
    const spans: number[] = [];
    const longer: CompressedPart[] = [];
    for (const p of group) {
      const rel = p.gte * SECTOR - start;
      const span = this.#payloadSpan(p.g, p.gte, buf.subarray(rel));
      if (span.end <= buf.length - rel) {
        batch.push(p);
        spans.push(rel + span.start, span.end - span.start);
      } else longer.push(p);
    }
    // Headers all checked before anything starts, so a bad one leaves nothing running.
    if (longer.length > 0) await this.#inflateBatchHere(longer, buf, start, into);
    if (batch.length === 0) return;
    const job = inflatePool.inflate({ src: buf, spans: Uint32Array.from(spans), grainBytes: gb });
    // No worker has started yet: inflate this batch here rather than wait.
    if (!job) return this.#inflateBatchHere(batch, buf, start, into);
    let result: InflateResult;
    try {
      result = await job;
    } catch (err) {
      // The worker died (or the pool was stopped) with our bytes: read them again and inflate here.
      if (err instanceof InflateLost) return this.#inflateRun(group, start, end, into);
      throw err;
    }
    try {
      if (result.failed >= 0) throw this.#inflateError(batch[result.failed]!.g, result.error);
      for (let k = 0; k < batch.length; k++) {
        const p = batch[k]!;
        const grain = result.out.subarray(k * gb, (k + 1) * gb);
        const len = result.lengths[k]!;
        // The last grain of a disk whose size is not a grain multiple inflates short: the rest reads as zero.
        if (len < gb) grain.fill(0, len);
        if (p.n < gb) this.#remember(p.g, grain.slice());
        into.set(grain.subarray(p.within, p.within + p.n), p.dst);
      }
    } finally {
      result.release();
    }
  }

  #remember(g: number, grain: Uint8Array): void {
    this.#grainCache.set(g, grain);
    if (this.#grainCache.size > GRAIN_CACHE) {
      const oldest = this.#grainCache.keys().next().value;
      if (oldest !== undefined) this.#grainCache.delete(oldest);
    }
  }

  /** A decompressed grain (grainBytes long), cached for reads smaller than a grain. */
  #grain(g: number, gte: number): Promise<Uint8Array> {
    const hit = this.#grainCache.get(g);
    if (hit) return hit instanceof Uint8Array ? Promise.resolve(hit) : hit;
    const load = this.#inflateGrain(g, gte);
    this.#grainCache.set(g, load);
    load.then(
      (v) => {
        if (this.#grainCache.get(g) === load) this.#grainCache.set(g, v);
      },
      () => this.#grainCache.delete(g),
    );
    if (this.#grainCache.size > GRAIN_CACHE) {
      const oldest = this.#grainCache.keys().next().value;
      if (oldest !== undefined) this.#grainCache.delete(oldest);
    }
    return load;
  }

  /**
   * Where grain `g`'s zlib stream lies relative to the start of its record (`first` holds at least
   * the header), after checking the header: label (streams with markers) and a possible size.
   */
  #payloadSpan(g: number, gte: number, first: Uint8Array): { start: number; end: number } {
    const hdr = grainHeaderSize(this.#markers);
    if (first.length < hdr) throw corrupt(this.#name, `compressed grain ${g} is truncated`, { grain: g });
    const view = new DataView(first.buffer, first.byteOffset, hdr);
    const size = view.getUint32(hdr - 4, true);
    if (this.#markers) {
      const lba = view.getBigUint64(0, true);
      if (lba !== BigInt(g) * BigInt(this.header.grainSize)) {
        throw corrupt(this.#name, `compressed grain ${g} is labelled with LBA ${lba}`, { grain: g, lba: Number(lba) });
      }
    }
    if (size === 0 || size > this.grainBytes * 2 + 1024 || gte * SECTOR + hdr + size > this.#fileSize) {
      throw corrupt(this.#name, `compressed grain ${g} has an impossible size ${size}`, { grain: g, size });
    }
    return { start: hdr, end: hdr + size };
  }

  #inflateError(g: number, cause: unknown): VdError {
    return new VdError('ERR_VD_CORRUPT', `${this.#name}: compressed grain ${g} does not inflate to at most one grain`, {
      cause,
      details: { file: this.#name, grain: g },
    });
  }

  /** Inflates grain `g`; `first` holds the start of its record when the caller read it already. */
  async #inflateGrain(g: number, gte: number, first?: Uint8Array): Promise<Uint8Array> {
    const gb = this.grainBytes;
    const at = gte * SECTOR;
    if (!first) {
      // The next grain of the same table usually follows this one: its start bounds our length.
      first = new Uint8Array(this.#recordEnd(g, gte) - at);
      await readFully(this.#store, at, first);
    }
    const { start: hdr, end } = this.#payloadSpan(g, gte, first);
    let payload: Uint8Array;
    if (end <= first.length) payload = first.subarray(hdr, end);
    else {
      payload = new Uint8Array(end - hdr);
      payload.set(first.subarray(hdr));
      await readFully(this.#store, at + first.length, payload.subarray(first.length - hdr));
    }
    let out: Uint8Array;
    try {
      // Inline, not one async zlib call per grain on libuv's pool: for one grain the async path's
      // stream set-up and garbage cost more CPU than the inflate itself (stream → raw used ~1.7×
      // the CPU). Large requests go to the worker pool in batches instead (`#inflatePooled`).
      out = inflateSync(payload, { maxOutputLength: gb, chunkSize: Math.max(gb, 64) });
    } catch (err) {
      throw this.#inflateError(g, err);
    }
    if (out.length === gb) return out;
    // The last grain of a disk whose size is not a grain multiple inflates short.
    const full = new Uint8Array(gb);
    full.set(out);
    return full;
  }

  async write(offset: number, data: Uint8Array, fallback: Fallback): Promise<void> {
    if (!this.writable) throw readOnlyError(`sparse extent ${this.#name}`);
    if (offset + data.length > this.#capBytes) {
      throw new VdError('ERR_VD_OUT_OF_RANGE', `${this.#name}: write reaches past the extent's capacity`, {
        details: { offset, length: data.length },
      });
    }
    await this.#markDirty();
    const gb = this.grainBytes;
    const inPlace: Promise<void>[] = [];
    const fresh: { g: number; within: number; n: number; from: number }[] = [];
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const g = Math.floor(pos / gb);
      const within = pos - g * gb;
      const n = Math.min(gb - within, data.length - done);
      const gte = await this.#gte(g);
      if (gte > GTE_ZEROED || (gte === GTE_ZEROED && !this.#zeroed)) {
        this.#checkGrain(g, gte);
        inPlace.push(this.#writeInPlace(gte, within, data.subarray(done, done + n)));
      } else {
        fresh.push({ g, within, n, from: done });
      }
      done += n;
    }
    const results = await Promise.allSettled([...inPlace, fresh.length > 0 ? this.#allocate(fresh, data, fallback) : Promise.resolve()]);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /**
   * Writes into allocated grain `gte`. A grain that reaches past the end of the file (one cut
   * short) is written under the allocation mutex after reserving its whole span, so no new grain
   * is ever appended over its tail. `#fileSize` only grows, so a grain inside it stays inside.
   */
  #writeInPlace(gte: number, within: number, part: Uint8Array): Promise<void> {
    if ((gte + this.header.grainSize) * SECTOR <= this.#fileSize) return this.#store.write(gte * SECTOR + within, part);
    return this.#mutex.run(() => {
      this.#reserve(gte);
      return this.#store.write(gte * SECTOR + within, part);
    });
  }

  /** Grain `gte`'s whole span counts as used, so allocation appends after it (under the mutex). */
  #reserve(gte: number): void {
    this.#fileSize = Math.max(this.#fileSize, (gte + this.header.grainSize) * SECTOR);
  }

  /** Appends grains for unallocated parts (filling partial grains from the fallback), then maps them. */
  #allocate(parts: { g: number; within: number; n: number; from: number }[], data: Uint8Array, fallback: Fallback): Promise<void> {
    return this.#mutex.run(async () => {
      const gb = this.grainBytes;
      let i = 0;
      while (i < parts.length) {
        // Another write may have allocated the grain while we waited.
        const p = parts[i]!;
        const now = await this.#gte(p.g);
        if (now > GTE_ZEROED) {
          this.#reserve(now);
          await this.#store.write(now * SECTOR + p.within, data.subarray(p.from, p.from + p.n));
          i++;
          continue;
        }
        let k = 1;
        while (
          i + k < parts.length &&
          parts[i + k]!.g === p.g + k &&
          (k + 1) * gb <= MAX_APPEND &&
          (await this.#gte(p.g + k)) <= GTE_ZEROED
        )
          k++;
        const buf = new Uint8Array(k * gb);
        const fills: Promise<void>[] = [];
        for (let j = 0; j < k; j++) {
          const q = parts[i + j]!;
          const grainStart = q.g * gb;
          if (q.n < gb && (await this.#gte(q.g)) === 0) {
            // Copy-on-write: the rest of the grain comes from the parent (or reads as zero).
            const len = Math.min(gb, this.#capBytes - grainStart);
            fills.push(fallback(grainStart, buf.subarray(j * gb, j * gb + len)));
          }
        }
        await Promise.all(fills);
        for (let j = 0; j < k; j++) {
          const q = parts[i + j]!;
          buf.set(data.subarray(q.from, q.from + q.n), j * gb + q.within);
        }
        const sector = Math.ceil(this.#fileSize / SECTOR);
        if (sector + (k * gb) / SECTOR > 2 ** 32)
          throw new VdError('ERR_VD_OUT_OF_RANGE', `${this.#name}: the extent file would exceed 2 TiB`);
        await this.#store.write(sector * SECTOR, buf);
        this.#fileSize = sector * SECTOR + buf.length;
        for (let j = 0; j < k; j++) await this.#setGte(p.g + j, sector + j * this.header.grainSize);
        i += k;
      }
    });
  }

  /** Changes one entry in memory; `flush` writes the table. */
  async #setGte(g: number, value: number): Promise<void> {
    const t = Math.floor(g / GTES_PER_GT);
    let gt = this.#gt(t);
    if (gt === undefined) {
      gt = new Uint32Array(GTES_PER_GT);
      this.#gts.set(t, gt);
    }
    const table = gt instanceof Uint32Array ? gt : await gt;
    table[g % GTES_PER_GT] = value;
    this.#dirtyGts.add(t);
  }

  /** Once per open; a failure is not remembered, so the next write tries again. */
  #markDirty(): Promise<void> {
    this.#dirty ??= (async () => {
      this.header.uncleanShutdown = true;
      await this.#store.write(0, encodeSparseHeader(this.header));
      await this.#store.flush();
    })().catch((err: unknown) => {
      this.#dirty = undefined;
      throw err;
    });
    return this.#dirty;
  }

  async zero(offset: number, length: number, fallback: Fallback, hasParent: boolean, noHole = false): Promise<void> {
    if (!this.writable) throw readOnlyError(`sparse extent ${this.#name}`);
    const gb = this.grainBytes;
    const end = offset + length;
    let pos = offset;
    const zeroes = zeroBuffer(Math.min(gb, length));
    while (pos < end) {
      const g = Math.floor(pos / gb);
      const grainEnd = Math.min((g + 1) * gb, this.#capBytes);
      const stop = Math.min(grainEnd, end);
      const whole = pos === g * gb && stop === grainEnd;
      const gte = await this.#gte(g);
      if (whole && this.#zeroed) {
        if (gte !== GTE_ZEROED) {
          await this.#markDirty();
          await this.#mutex.run(() => this.#setGte(g, GTE_ZEROED));
        }
      } else if (!(gte === 0 && !hasParent && !noHole) && !(gte === GTE_ZEROED && this.#zeroed)) {
        await this.write(pos, zeroes.subarray(0, stop - pos), fallback);
      }
      pos = stop;
    }
  }

  async status(offset: number, length: number): Promise<Run[]> {
    const gb = this.grainBytes;
    const runs: Run[] = [];
    const end = offset + length;
    let pos = offset;
    for (let seen = 0; pos < end && seen < STATUS_GRAINS; seen++) {
      let type: Run['type'];
      let stop: number;
      if (pos >= this.#capBytes) {
        type = 'hole';
        stop = end;
      } else {
        const g = Math.floor(pos / gb);
        stop = Math.min((g + 1) * gb, end, this.#capBytes);
        const gte = await this.#gte(g);
        type = gte === 0 ? 'hole' : gte === GTE_ZEROED && this.#zeroed ? 'zero' : 'data';
      }
      const last = runs[runs.length - 1];
      if (last && last.type === type) last.length += stop - pos;
      else runs.push({ length: stop - pos, type });
      pos = stop;
    }
    return runs;
  }

  allocatedBytes(): number {
    return this.#fileSize;
  }

  /**
   * Data first, then the grain tables that point to it, then (for new tables) the directory.
   * What is dirty stays dirty until it is durable, so a flush that fails is redone by the next.
   */
  flush(): Promise<void> {
    if (!this.writable) return Promise.resolve();
    return this.#mutex.run(async () => {
      await this.#store.flush();
      if (this.#dirtyGts.size === 0 && !this.#gdDirty) return;
      const writes: Promise<void>[] = [];
      for (const t of [...this.#dirtyGts].sort((a, b) => a - b)) {
        const gt = this.#gts.get(t) as Uint32Array;
        const bytes = encodeU32Array(gt);
        if (this.#gd[t] === 0) {
          this.#gd[t] = this.#appendSectors(GT_SECTORS);
          if (this.#rgd) this.#rgd[t] = this.#appendSectors(GT_SECTORS);
          this.#gdDirty = true;
        }
        writes.push(this.#store.write(this.#gd[t]! * SECTOR, bytes));
        if (this.#rgd && this.#rgd[t] !== 0) writes.push(this.#store.write(this.#rgd[t]! * SECTOR, bytes));
      }
      const results = await Promise.allSettled(writes);
      for (const r of results) if (r.status === 'rejected') throw r.reason;
      if (this.#gdDirty) {
        await this.#store.flush();
        await this.#store.write(this.header.gdOffset * SECTOR, encodeU32Array(this.#gd, 4));
        if (this.#rgd) await this.#store.write(this.header.rgdOffset * SECTOR, encodeU32Array(this.#rgd, 4));
      }
      await this.#store.flush();
      // Tables change only under the mutex, so nothing was dirtied while this ran.
      this.#dirtyGts.clear();
      this.#gdDirty = false;
    });
  }

  #appendSectors(n: number): number {
    const sector = Math.ceil(this.#fileSize / SECTOR);
    this.#fileSize = (sector + n) * SECTOR;
    return sector;
  }

  async close(): Promise<void> {
    if (this.#compressed && !this.#released) {
      this.#released = true;
      inflatePool.release();
    }
    if (!this.#dirty) return;
    await this.#dirty;
    await this.flush();
    this.header.uncleanShutdown = false;
    await this.#store.write(0, encodeSparseHeader(this.header));
    // A grain table placed last leaves the file shorter than its sector count says; pad it.
    const size = await this.#store.size();
    if (size < this.#fileSize) await this.#store.write(this.#fileSize - 1, new Uint8Array(1));
    await this.#store.flush();
  }
}
