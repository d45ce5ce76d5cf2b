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

/**
 * The read loop of grain-mapped extents: consecutive grains that are adjacent in the store become
 * one store read, consecutive holes one fallback call.
 */
export async function readMapped(
  store: ByteStore,
  offset: number,
  into: Uint8Array,
  grainBytes: number,
  capBytes: number,
  locate: (grain: number) => Promise<number>,
  fallback: Fallback,
): Promise<void> {
  const tasks: Promise<void>[] = [];
  let run: { hole: boolean; dst: number; src: number; len: number } | undefined;
  const flush = () => {
    if (!run) return;
    const sub = into.subarray(run.dst, run.dst + run.len);
    tasks.push(run.hole ? fallback(run.src, sub) : readFully(store, run.src, sub));
    run = undefined;
  };
  let failure: unknown;
  let done = 0;
  try {
    while (done < into.length) {
      const pos = offset + done;
      if (pos >= capBytes) {
        flush();
        into.fill(0, done);
        break;
      }
      const g = Math.floor(pos / grainBytes);
      const within = pos - g * grainBytes;
      const n = Math.min(grainBytes - within, into.length - done, capBytes - pos);
      const at = await locate(g);
      if (at === ZEROES_AT) {
        flush();
        into.fill(0, done, done + n);
      } else {
        const hole = at === HOLE;
        const src = hole ? pos : at + within;
        if (run && run.hole === hole && run.src + run.len === src) run.len += n;
        else {
          flush();
          run = { hole, dst: done, src, len: n };
        }
      }
      done += n;
    }
    flush();
  } catch (err) {
    failure = err;
  }
  const results = await Promise.allSettled(tasks);
  if (failure !== undefined) throw failure;
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
