import { VdError } from '../../errors.js';
import type { ByteStore } from '../../spec.js';
import { readFully } from '../raw.js';
import { COWD_MAGIC, MAX_GRAIN_SECTORS, SECTOR } from './constants.js';
import type { Fallback, Placement, Run, VmdkExtent } from './extent.js';
import { cachedLoad, HOLE, placeMapped, readMapped, readOnlyError } from './extent.js';
import { readU32Array } from './sparse.js';

/** ESX vmfsSparse ("COWD") redo log header: 2048 bytes, u32 fields. */
export interface CowdHeader {
  version: number;
  flags: number;
  /** Sectors. */
  capacity: number;
  grainSize: number;
  gdOffset: number;
  numGDEntries: number;
  freeSector: number;
  parentFileName: string;
  generation: number;
  uncleanShutdown: boolean;
}

export const COWD_HEADER_SIZE = 2048;
/** COWD grain tables hold 4096 entries (16 KiB), not 512. */
export const COWD_GTES = 4096;
/** Grain tables kept (16 KiB each). */
const GT_CACHE = 1024;

function corrupt(name: string, message: string): VdError {
  return new VdError('ERR_VD_CORRUPT', `${name}: ${message}`, { details: { file: name } });
}

export function isCowdMagic(head: Uint8Array): boolean {
  return head.length >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) === COWD_MAGIC;
}

export function parseCowdHeader(bytes: Uint8Array, name = 'vmdk'): CowdHeader {
  if (bytes.length < COWD_HEADER_SIZE) throw corrupt(name, `COWD header is ${bytes.length} bytes, needs ${COWD_HEADER_SIZE}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, COWD_HEADER_SIZE);
  if (v.getUint32(0, true) !== COWD_MAGIC) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: not a COWD redo log (bad magic)`);
  const version = v.getUint32(4, true);
  if (version !== 1) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name}: COWD version ${version} is not supported (1 is)`);
  const grainSize = v.getUint32(16, true);
  if (grainSize < 1 || grainSize > MAX_GRAIN_SECTORS || (grainSize & (grainSize - 1)) !== 0) {
    throw corrupt(name, `COWD grain size ${grainSize} sectors is not a power of two up to ${MAX_GRAIN_SECTORS}`);
  }
  const capacity = v.getUint32(12, true);
  const numGDEntries = v.getUint32(24, true);
  if (numGDEntries < Math.ceil(capacity / (grainSize * COWD_GTES)))
    throw corrupt(name, `COWD grain directory (${numGDEntries} entries) does not cover the capacity`);
  const nameBytes = bytes.subarray(32, 32 + 1024);
  const nul = nameBytes.indexOf(0);
  return {
    version,
    flags: v.getUint32(8, true),
    capacity,
    grainSize,
    gdOffset: v.getUint32(20, true),
    numGDEntries,
    freeSector: v.getUint32(28, true),
    parentFileName: new TextDecoder().decode(nul === -1 ? nameBytes : nameBytes.subarray(0, nul)),
    generation: v.getUint32(1060, true),
    uncleanShutdown: v.getUint32(1648, true) !== 0,
  };
}

/** Reads a vmfsSparse redo log: unallocated grains (entry 0) fall through to the parent. */
export class CowdExtent implements VmdkExtent {
  readonly kind = 'VMFSSPARSE';
  readonly writable = false;
  readonly #gts = new Map<number, Promise<Uint32Array>>();

  private constructor(
    readonly store: ByteStore,
    readonly name: string,
    readonly header: CowdHeader,
    readonly size: number,
    readonly gd: Uint32Array,
    readonly fileSize: number,
  ) {}

  static async open(store: ByteStore, opts: { name: string; size?: number }): Promise<CowdExtent> {
    const fileSize = await store.size();
    const head = new Uint8Array(COWD_HEADER_SIZE);
    if (fileSize < COWD_HEADER_SIZE) throw corrupt(opts.name, 'COWD file is shorter than its header');
    await readFully(store, 0, head);
    const h = parseCowdHeader(head, opts.name);
    const need = Math.ceil(h.capacity / (h.grainSize * COWD_GTES));
    if (h.gdOffset === 0 || h.gdOffset * SECTOR + need * 4 > fileSize)
      throw corrupt(opts.name, 'COWD grain directory lies outside the file');
    const bytes = new Uint8Array(need * 4);
    await readFully(store, h.gdOffset * SECTOR, bytes);
    const gd = readU32Array(bytes, need);
    for (let i = 0; i < need; i++) {
      if (gd[i] !== 0 && gd[i]! * SECTOR + COWD_GTES * 4 > fileSize)
        throw corrupt(opts.name, `COWD grain directory entry ${i} points past the end of the file`);
    }
    return new CowdExtent(store, opts.name, h, opts.size ?? h.capacity * SECTOR, gd, fileSize);
  }

  async #gte(g: number): Promise<number> {
    const t = Math.floor(g / COWD_GTES);
    const sector = this.gd[t];
    if (!sector) return 0;
    const gt = cachedLoad(this.#gts, t, GT_CACHE, async () => {
      const bytes = new Uint8Array(COWD_GTES * 4);
      await readFully(this.store, sector * SECTOR, bytes);
      return readU32Array(bytes, COWD_GTES);
    });
    return (await gt)[g % COWD_GTES]!;
  }

  /** Grain `g`'s byte offset in the store, or HOLE (`readMapped`'s `locate`). */
  readonly #locate = async (g: number): Promise<number> => {
    const gte = await this.#gte(g);
    if (gte === 0) return HOLE;
    if (gte * SECTOR >= this.fileSize) throw corrupt(this.name, `grain ${g} points past the end of the file`);
    return gte * SECTOR;
  };

  read(offset: number, into: Uint8Array, fallback: Fallback): Promise<void> {
    return readMapped(this.store, offset, into, this.header.grainSize * SECTOR, this.header.capacity * SECTOR, this.#locate, fallback);
  }

  placements(offset: number, length: number): Promise<Placement[] | undefined> {
    return placeMapped(this.store, offset, length, this.header.grainSize * SECTOR, this.header.capacity * SECTOR, this.#locate);
  }

  async status(offset: number, length: number): Promise<Run[]> {
    const gb = this.header.grainSize * SECTOR;
    const cap = this.header.capacity * SECTOR;
    const runs: Run[] = [];
    let pos = offset;
    const end = offset + length;
    for (let i = 0; pos < end && i < 65536; i++) {
      const g = Math.floor(pos / gb);
      const stop = pos >= cap ? end : Math.min((g + 1) * gb, end, cap);
      const type = pos >= cap || (await this.#gte(g)) === 0 ? 'hole' : 'data';
      const last = runs[runs.length - 1];
      if (last && last.type === type) last.length += stop - pos;
      else runs.push({ length: stop - pos, type });
      pos = stop;
    }
    return runs;
  }

  async write(): Promise<void> {
    throw readOnlyError(`vmfsSparse redo log ${this.name} (read-only in vd)`);
  }
  async zero(): Promise<void> {
    throw readOnlyError(`vmfsSparse redo log ${this.name} (read-only in vd)`);
  }
  allocatedBytes(): number {
    return this.fileSize;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
