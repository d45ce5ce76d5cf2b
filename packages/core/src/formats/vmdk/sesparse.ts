import { VdError } from '../../errors.js';
import type { ByteStore } from '../../spec.js';
import { readFully } from '../raw.js';
import { SECTOR, SESPARSE_MAGIC, SESPARSE_VOLATILE_MAGIC } from './constants.js';
import type { Fallback, Placement, Run, VmdkExtent } from './extent.js';
import { cachedLoad, HOLE, placeMapped, readMapped, readOnlyError, ZEROES_AT } from './extent.js';

/** seSparse constant header (sector 0, all u64); offsets and sizes in sectors. */
export interface SeSparseHeader {
  capacity: number;
  grainSize: number;
  grainTableSize: number;
  volatileHeaderOffset: number;
  grainDirOffset: number;
  grainDirSize: number;
  grainTablesOffset: number;
  grainTablesSize: number;
  grainsOffset: number;
  grainsSize: number;
}

export const SESPARSE_VERSION = 0x0000000200000001n;
/** The only geometry ESXi writes and qemu reads: 4 KiB grains, 4096-entry (32 KiB) tables. */
export const SESPARSE_GRAIN_SECTORS = 8;
export const SESPARSE_GT_SECTORS = 64;
const GTES = (SESPARSE_GT_SECTORS * SECTOR) / 8;
/** Grain tables kept (32 KiB each). */
const GT_CACHE = 512;

function corrupt(name: string, message: string): VdError {
  return new VdError('ERR_VD_CORRUPT', `${name}: ${message}`, { details: { file: name } });
}

function u64(v: DataView, at: number, name: string): number {
  const x = v.getBigUint64(at, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(name, `seSparse header field at ${at} is out of range`);
  return Number(x);
}

export function isSeSparseMagic(head: Uint8Array): boolean {
  return head.length >= 8 && new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true) === BigInt(SESPARSE_MAGIC);
}

export function parseSeSparseHeader(bytes: Uint8Array, name = 'vmdk'): SeSparseHeader {
  if (bytes.length < SECTOR) throw corrupt(name, 'seSparse header is truncated');
  const v = new DataView(bytes.buffer, bytes.byteOffset, SECTOR);
  if (v.getBigUint64(0, true) !== BigInt(SESPARSE_MAGIC))
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: not a seSparse extent (bad magic)`);
  const version = v.getBigUint64(8, true);
  if (version !== SESPARSE_VERSION)
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: seSparse version 0x${version.toString(16)} is not supported`);
  const h: SeSparseHeader = {
    capacity: u64(v, 16, name),
    grainSize: u64(v, 24, name),
    grainTableSize: u64(v, 32, name),
    volatileHeaderOffset: u64(v, 80, name),
    grainDirOffset: u64(v, 128, name),
    grainDirSize: u64(v, 136, name),
    grainTablesOffset: u64(v, 144, name),
    grainTablesSize: u64(v, 152, name),
    grainsOffset: u64(v, 192, name),
    grainsSize: u64(v, 200, name),
  };
  if (v.getBigUint64(40, true) !== 0n)
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: seSparse flags are set; refusing to guess their meaning`);
  if (h.grainSize !== SESPARSE_GRAIN_SECTORS)
    throw corrupt(name, `seSparse grain size ${h.grainSize} is not ${SESPARSE_GRAIN_SECTORS} sectors`);
  if (h.grainTableSize !== SESPARSE_GT_SECTORS)
    throw corrupt(name, `seSparse grain table size ${h.grainTableSize} is not ${SESPARSE_GT_SECTORS} sectors`);
  return h;
}

/**
 * Reads an ESXi seSparse snapshot extent. Entries: 0 = fall through to the parent; 1 (unmapped)
 * and 2 (zero) read as zeroes; 3 = allocated, the grain index split across the entry's bits.
 */
export class SeSparseExtent implements VmdkExtent {
  readonly kind = 'SESPARSE';
  readonly writable = false;
  readonly #gts = new Map<number, Promise<BigUint64Array>>();

  private constructor(
    readonly store: ByteStore,
    readonly name: string,
    readonly header: SeSparseHeader,
    readonly size: number,
    readonly gd: BigUint64Array,
    readonly fileSize: number,
  ) {}

  static async open(store: ByteStore, opts: { name: string; size?: number }): Promise<SeSparseExtent> {
    const name = opts.name;
    const fileSize = await store.size();
    const head = new Uint8Array(SECTOR);
    if (fileSize < SECTOR) throw corrupt(name, 'seSparse file is shorter than its header');
    await readFully(store, 0, head);
    const h = parseSeSparseHeader(head, name);
    const vol = new Uint8Array(32);
    if ((h.volatileHeaderOffset + 1) * SECTOR > fileSize) throw corrupt(name, 'seSparse volatile header lies outside the file');
    await readFully(store, h.volatileHeaderOffset * SECTOR, vol);
    const vv = new DataView(vol.buffer);
    if (vv.getBigUint64(0, true) !== BigInt(SESPARSE_VOLATILE_MAGIC)) throw corrupt(name, 'seSparse volatile header has a bad magic');
    if (vv.getBigUint64(24, true) !== 0n) {
      throw new VdError(
        'ERR_VD_NOT_SUPPORTED',
        `${name}: seSparse journal needs replaying (the snapshot was not closed cleanly); let ESXi consolidate it first`,
      );
    }
    const entries = Math.ceil(h.capacity / (SESPARSE_GRAIN_SECTORS * GTES));
    if (h.grainDirSize * (SECTOR / 8) < entries || (h.grainDirOffset + h.grainDirSize) * SECTOR > fileSize) {
      throw corrupt(name, 'seSparse grain directory is too small for the capacity or lies outside the file');
    }
    const bytes = new Uint8Array(entries * 8);
    await readFully(store, h.grainDirOffset * SECTOR, bytes);
    const dv = new DataView(bytes.buffer);
    const gd = new BigUint64Array(entries);
    for (let i = 0; i < entries; i++) gd[i] = dv.getBigUint64(i * 8, true);
    return new SeSparseExtent(store, name, h, opts.size ?? h.capacity * SECTOR, gd, fileSize);
  }

  #table(t: number): Promise<BigUint64Array> | undefined {
    const gde = this.gd[t] ?? 0n;
    if (gde === 0n) return undefined;
    const hit = this.#gts.get(t);
    if (hit) return hit;
    if (gde >> 32n !== 0x10000000n) throw corrupt(this.name, `seSparse grain directory entry ${t} is malformed`);
    const index = Number(gde & 0xffffffffn);
    const sector = this.header.grainTablesOffset + index * SESPARSE_GT_SECTORS;
    if (index * SESPARSE_GT_SECTORS >= this.header.grainTablesSize || (sector + SESPARSE_GT_SECTORS) * SECTOR > this.fileSize) {
      throw corrupt(this.name, `seSparse grain table ${index} lies outside the file`);
    }
    return cachedLoad(this.#gts, t, GT_CACHE, async () => {
      const bytes = new Uint8Array(GTES * 8);
      await readFully(this.store, sector * SECTOR, bytes);
      const dv = new DataView(bytes.buffer);
      const out = new BigUint64Array(GTES);
      for (let i = 0; i < GTES; i++) out[i] = dv.getBigUint64(i * 8, true);
      return out;
    });
  }

  /** -1: hole; -2: zeroes; else the data sector. */
  async #locate(g: number): Promise<number> {
    const t = this.#table(Math.floor(g / GTES));
    if (!t) return -1;
    const e = (await t)[g % GTES]!;
    const kind = Number(e >> 60n);
    if (kind === 0) {
      if (e !== 0n) throw corrupt(this.name, `seSparse grain ${g} has a malformed unallocated entry`);
      return -1;
    }
    if (kind === 1 || kind === 2) return -2;
    if (kind !== 3) throw corrupt(this.name, `seSparse grain ${g} has an unknown entry type ${kind}`);
    const idx = Number(((e & 0x0fff000000000000n) >> 48n) | ((e & 0x0000ffffffffffffn) << 12n));
    const sector = this.header.grainsOffset + idx * SESPARSE_GRAIN_SECTORS;
    if (
      !Number.isSafeInteger(sector) ||
      idx * SESPARSE_GRAIN_SECTORS >= this.header.grainsSize ||
      (sector + SESPARSE_GRAIN_SECTORS) * SECTOR > this.fileSize
    ) {
      throw corrupt(this.name, `seSparse grain ${g} points outside the grain area`);
    }
    return sector;
  }

  /** `#locate` in `readMapped`'s terms: a byte offset, HOLE or ZEROES_AT. */
  readonly #locateBytes = async (g: number): Promise<number> => {
    const at = await this.#locate(g);
    return at === -1 ? HOLE : at === -2 ? ZEROES_AT : at * SECTOR;
  };

  read(offset: number, into: Uint8Array, fallback: Fallback): Promise<void> {
    return readMapped(
      this.store,
      offset,
      into,
      SESPARSE_GRAIN_SECTORS * SECTOR,
      this.header.capacity * SECTOR,
      this.#locateBytes,
      fallback,
    );
  }

  placements(offset: number, length: number): Promise<Placement[] | undefined> {
    return placeMapped(this.store, offset, length, SESPARSE_GRAIN_SECTORS * SECTOR, this.header.capacity * SECTOR, this.#locateBytes);
  }

  async status(offset: number, length: number): Promise<Run[]> {
    const gb = SESPARSE_GRAIN_SECTORS * SECTOR;
    const cap = this.header.capacity * SECTOR;
    const runs: Run[] = [];
    let pos = offset;
    const end = offset + length;
    for (let i = 0; pos < end && i < 65536; i++) {
      const g = Math.floor(pos / gb);
      const stop = pos >= cap ? end : Math.min((g + 1) * gb, end, cap);
      const at = pos >= cap ? -1 : await this.#locate(g);
      const type = at === -1 ? 'hole' : at === -2 ? 'zero' : 'data';
      const last = runs[runs.length - 1];
      if (last && last.type === type) last.length += stop - pos;
      else runs.push({ length: stop - pos, type });
      pos = stop;
    }
    return runs;
  }

  async write(): Promise<void> {
    throw readOnlyError(`seSparse extent ${this.name} (read-only in vd)`);
  }
  async zero(): Promise<void> {
    throw readOnlyError(`seSparse extent ${this.name} (read-only in vd)`);
  }
  allocatedBytes(): number {
    return this.fileSize;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
