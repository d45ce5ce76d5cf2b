import { VdError } from '../../errors.js';
import type { ByteStore } from '../../spec.js';
import { readFully } from '../raw.js';

/** A stretch of an extent and what backs it (`hole`: the extent has nothing; the parent may). */
export interface Run {
  length: number;
  type: 'data' | 'zero' | 'hole';
}

/** Reads what an extent does not hold (the parent, or zeroes); `offset` is extent-relative. */
export type Fallback = (offset: number, into: Uint8Array) => Promise<void>;

/**
 * One extent of a VMDK link, addressed from its own offset 0. Extents do not own their stores:
 * several extents may share one (embedded descriptors, FLAT extents with offsets), so the link
 * closes stores.
 */
export interface VmdkExtent {
  readonly kind: string;
  /** Bytes, as the descriptor gives them. */
  readonly size: number;
  readonly writable: boolean;
  read(offset: number, into: Uint8Array, fallback: Fallback): Promise<void>;
  write(offset: number, data: Uint8Array, fallback: Fallback): Promise<void>;
  /**
   * Makes the range read as zeroes; `hasParent` says whether a hole would show a parent's data,
   * `noHole` that the range must stay allocated.
   */
  zero(offset: number, length: number, fallback: Fallback, hasParent: boolean, noHole?: boolean): Promise<void>;
  /** Runs from `offset`, covering at least one byte and at most `length`. */
  status(offset: number, length: number): Promise<Run[]>;
  /** Where `length` bytes from `offset` lie in files, or undefined when not all of them do as is. */
  placements?(offset: number, length: number): Promise<Placement[] | undefined>;
  /** Bytes the extent takes in its store (as of open for flat extents). */
  allocatedBytes(): number;
  flush(): Promise<void>;
  /** Writes back what is pending (not the store: the link closes stores). */
  close(): Promise<void>;
}

export function readOnlyError(what: string): VdError {
  return new VdError('ERR_VD_READ_ONLY', `${what} cannot be written`);
}

const ZEROES = new Uint8Array(1 << 20);

/** FLAT and VMFS extents: disk byte N is store byte start+N. */
export class FlatExtent implements VmdkExtent {
  readonly kind = 'FLAT';
  constructor(
    readonly store: ByteStore,
    readonly size: number,
    readonly start: number,
    readonly writable: boolean,
    /** Store size at open, for `allocatedBytes`. */
    readonly storeSize = 0,
  ) {}

  read(offset: number, into: Uint8Array): Promise<void> {
    return readFully(this.store, this.start + offset, into);
  }

  async placements(offset: number, length: number): Promise<Placement[]> {
    return [{ store: this.store, position: this.start + offset, length }];
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw readOnlyError(`flat extent ${this.store.name}`);
    await this.store.write(this.start + offset, data);
  }

  async zero(offset: number, length: number, _fallback?: Fallback, _hasParent?: boolean, noHole = false): Promise<void> {
    if (!this.writable) throw readOnlyError(`flat extent ${this.store.name}`);
    if (!noHole && this.store.punchHole && (await this.store.punchHole(this.start + offset, length))) return;
    for (let at = 0; at < length; at += ZEROES.length) {
      await this.store.write(this.start + offset + at, ZEROES.subarray(0, Math.min(ZEROES.length, length - at)));
    }
  }

  async status(offset: number, length: number): Promise<Run[]> {
    const got = this.store.allocation ? await this.store.allocation(this.start + offset, length) : undefined;
    if (!got || got.length === 0) return [{ length, type: 'data' }];
    const runs: Run[] = [];
    let at = offset;
    for (const e of got) {
      const s = e.offset - this.start;
      if (s !== at || e.length <= 0) break;
      const n = Math.min(e.length, offset + length - at);
      runs.push({ length: n, type: e.type === 'hole' ? 'hole' : e.type === 'zero' ? 'zero' : 'data' });
      at += n;
      if (at >= offset + length) break;
    }
    return runs.length > 0 ? runs : [{ length, type: 'data' }];
  }

  allocatedBytes(): number {
    return Math.max(0, Math.min(this.size, this.storeSize - this.start));
  }

  flush(): Promise<void> {
    return this.writable ? this.store.flush() : Promise.resolve();
  }

  async close(): Promise<void> {}
}

/** ZERO extents: no file, reads as zeroes. NOACCESS extents: no file, reading is refused. */
export class ZeroExtent implements VmdkExtent {
  readonly writable = false;
  constructor(
    readonly size: number,
    readonly kind: 'ZERO' | 'NOACCESS' = 'ZERO',
  ) {}

  async read(_offset: number, into: Uint8Array): Promise<void> {
    if (this.kind === 'NOACCESS') throw new VdError('ERR_VD_PERMISSION', 'this range of the disk lies in a NOACCESS extent');
    into.fill(0);
  }
  async write(): Promise<void> {
    throw readOnlyError('a ZERO extent');
  }
  async zero(): Promise<void> {
    throw readOnlyError('a ZERO extent');
  }
  async status(_offset: number, length: number): Promise<Run[]> {
    return [{ length, type: 'zero' }];
  }
  allocatedBytes(): number {
    return 0;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/**
 * A bounded cache of loads (grain tables) by key: the oldest entry goes when `limit` is passed,
 * and a load that fails is forgotten, so a transient read error is not served for good.
 */
export function cachedLoad<K, V>(cache: Map<K, Promise<V>>, key: K, limit: number, load: () => Promise<V>): Promise<V> {
  const hit = cache.get(key);
  if (hit) return hit;
  const loading = load();
  loading.catch(() => {
    if (cache.get(key) === loading) cache.delete(key);
  });
  if (cache.size >= limit) cache.delete(cache.keys().next().value!);
  cache.set(key, loading);
  return loading;
}

/** `locate` answers: a grain's byte offset in the store, or HOLE (ask the fallback), or ZEROES. */
export const HOLE = -1;
export const ZEROES_AT = -2;

/** A stretch of a grain-mapped range: in the store at `src`, a hole (`src`: the extent offset), or zeroes. */
interface MappedRun {
  kind: 'file' | 'hole' | 'zero';
  /** Offset in the range. */
  dst: number;
  src: number;
  len: number;
}

/**
 * The runs of `length` bytes from `offset` of a grain-mapped extent: consecutive grains adjacent
 * in the store make one run, consecutive holes one, consecutive zeroes (or bytes past `capBytes`) one.
 */
async function mapGrains(
  offset: number,
  length: number,
  grainBytes: number,
  capBytes: number,
  locate: (grain: number) => Promise<number>,
): Promise<MappedRun[]> {
  const runs: MappedRun[] = [];
  for (let done = 0; done < length; ) {
    const pos = offset + done;
    let kind: MappedRun['kind'] = 'zero';
    let src = 0;
    let n = length - done;
    if (pos < capBytes) {
      const g = Math.floor(pos / grainBytes);
      const within = pos - g * grainBytes;
      n = Math.min(grainBytes - within, n, capBytes - pos);
      const at = await locate(g);
      if (at === HOLE) [kind, src] = ['hole', pos];
      else if (at !== ZEROES_AT) [kind, src] = ['file', at + within];
    }
    const last = runs.at(-1);
    if (last?.kind === kind && (kind === 'zero' || last.src + last.len === src)) last.len += n;
    else runs.push({ kind, dst: done, src, len: n });
    done += n;
  }
  return runs;
}

/** The read loop of grain-mapped extents: one store read per run of adjacent grains, one fallback call per run of holes. */
export async function readMapped(
  store: ByteStore,
  offset: number,
  into: Uint8Array,
  grainBytes: number,
  capBytes: number,
  locate: (grain: number) => Promise<number>,
  fallback: Fallback,
): Promise<void> {
  const runs = await mapGrains(offset, into.length, grainBytes, capBytes, locate);
  const results = await Promise.allSettled(
    runs.map(async (r) => {
      const sub = into.subarray(r.dst, r.dst + r.len);
      if (r.kind === 'zero') sub.fill(0);
      else await (r.kind === 'hole' ? fallback(r.src, sub) : readFully(store, r.src, sub));
    }),
  );
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * Where a range of an extent lies, for zero-copy reads: runs of a store, and holes (extent
 * offsets) that show the parent. Bytes stored any other way (zeroed or compressed grains, past the
 * capacity) have no place in a file.
 */
export type Placement = { store: ByteStore; position: number; length: number } | { hole: number; length: number };

/** The placements of a grain-mapped range (see `readMapped`), or undefined when some of it reads as zeroes. */
export async function placeMapped(
  store: ByteStore,
  offset: number,
  length: number,
  grainBytes: number,
  capBytes: number,
  locate: (grain: number) => Promise<number>,
): Promise<Placement[] | undefined> {
  const runs = await mapGrains(offset, length, grainBytes, capBytes, locate);
  if (runs.some((r) => r.kind === 'zero')) return undefined;
  return runs.map((r) => (r.kind === 'file' ? { store, position: r.src, length: r.len } : { hole: r.src, length: r.len }));
}
