import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { FileStore, readFully, VdError } from '@vd/core';

/**
 * A snapshot's redo log: the writes made to a disk since the snapshot, kept beside the frozen
 * parent. Two files:
 * - `data`: sparse, as large as the disk; grain N's bytes sit at the disk offset of grain N.
 * - `map`: one byte per grain, 1 when the grain lives in `data`.
 *
 * A grain is always written whole to `data` first (copy-on-write from the parent for a partial
 * first write), and only then is its map byte set, with a synchronous pwrite. So a process killed
 * at any moment leaves every grain either in the parent (the write was not acknowledged) or
 * complete in `data`; `flush()` makes both files durable against power loss too.
 *
 * Power loss between flushes is another matter: the kernel may write the map byte back before
 * the grain's data, and the grain then reads as garbage (zeroes, or half of it) where the parent's
 * bytes were. With `syncData` a grain's data is fdatasync'd before its map byte is written (group
 * commit: one sync serves every grain whose data landed before it started), so a map byte on disk
 * always points at complete data.
 */
export interface OverlayOptions {
  /** Sync a grain's data before publishing its map byte (the host's `fsync` durability). */
  syncData?: boolean;
}

export class Overlay {
  readonly grain: number;
  readonly size: number;
  readonly grains: number;
  /** 1 where the grain is in `data`. */
  readonly map: Uint8Array;
  /** 1 where a grain was written since its last copy to the parent (consolidation's worklist). */
  readonly dirty: Uint8Array;
  readonly dataPath: string;
  readonly mapPath: string;

  readonly #data: FileStore;
  readonly #mapFd: number;
  readonly #locks = new Map<number, Promise<void>>();
  readonly #one = new Uint8Array(1);
  readonly #syncData: boolean;
  /** The data sync running now, and the one queued behind it for grains that landed meanwhile. */
  #syncRunning: Promise<void> | undefined;
  #syncQueued: Promise<void> | undefined;
  #closed = false;

  private constructor(data: FileStore, mapFd: number, map: Uint8Array, size: number, grain: number, mapPath: string, opts: OverlayOptions) {
    this.#syncData = opts.syncData === true;
    this.#data = data;
    this.dataPath = data.name;
    this.mapPath = mapPath;
    this.#mapFd = mapFd;
    this.map = map;
    this.size = size;
    this.grain = grain;
    this.grains = map.length;
    this.dirty = new Uint8Array(map.length);
    this.#one[0] = 1;
  }

  /** Creates both files (failing when either exists) and syncs them before returning. */
  static async create(dataPath: string, mapPath: string, size: number, grain: number, opts: OverlayOptions = {}): Promise<Overlay> {
    checkGeometry(size, grain);
    const grains = Math.ceil(size / grain);
    const data = await FileStore.open(dataPath, { create: true });
    let fd: number | undefined;
    try {
      await data.truncate(size);
      await data.flush();
      fd = openSync(mapPath, 'wx+', 0o644);
      const zeroes = new Uint8Array(grains);
      if (grains > 0) writeSync(fd, zeroes, 0, grains, 0);
      fdatasyncSync(fd);
      return new Overlay(data, fd, zeroes, size, grain, mapPath, opts);
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      await data.close().catch(() => {});
      throw err;
    }
  }

  /** Opens the files of an existing overlay; a map of the wrong size is ERR_VD_CORRUPT. */
  static async open(dataPath: string, mapPath: string, size: number, grain: number, opts: OverlayOptions = {}): Promise<Overlay> {
    checkGeometry(size, grain);
    const grains = Math.ceil(size / grain);
    const data = await FileStore.open(dataPath);
    let fd: number | undefined;
    try {
      fd = openSync(mapPath, 'r+');
      const map = new Uint8Array(grains + 1);
      let got = 0;
      for (;;) {
        const n = readSync(fd, map, got, map.length - got, got);
        if (n <= 0) break;
        got += n;
        if (got === map.length) break;
      }
      if (got !== grains) {
        throw new VdError('ERR_VD_CORRUPT', `snapshot map ${mapPath} has ${got} entries; the disk has ${grains} grains`, {
          details: { mapPath, got, grains },
        });
      }
      for (let g = 0; g < grains; g++) {
        if (map[g]! > 1) throw new VdError('ERR_VD_CORRUPT', `snapshot map ${mapPath}: entry ${g} is ${map[g]}`, { details: { mapPath } });
      }
      if ((await data.size()) !== size) {
        throw new VdError('ERR_VD_CORRUPT', `snapshot data ${dataPath} is not ${size} bytes`, { details: { dataPath, size } });
      }
      return new Overlay(data, fd, map.subarray(0, grains), size, grain, mapPath, opts);
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      await data.close().catch(() => {});
      throw err;
    }
  }

  /** Bytes of grain `g` (the last one may be short). */
  grainLength(g: number): number {
    return Math.min(this.grain, this.size - g * this.grain);
  }

  /** Reads `[offset, offset + into.length)`, which must lie in grains that are in `data`. */
  readData(offset: number, into: Uint8Array): Promise<void> {
    return readFully(this.#data, offset, into);
  }

  /** Runs `fn` with the data file's descriptor, open until it settles: its byte N is disk byte N. */
  withDataDescriptor<T>(fn: (fd: number) => Promise<T>): Promise<T> {
    return this.#data.withDescriptor(fn);
  }

  /**
   * Writes `data` at `offset`; `readParent` fills grains not yet here (copy-on-write). Resolves
   * when every touched grain is complete in `data` and marked in the map.
   */
  async write(offset: number, data: Uint8Array, readParent: (offset: number, into: Uint8Array) => Promise<void>): Promise<void> {
    const g0 = Math.floor(offset / this.grain);
    const g1 = Math.floor((offset + data.length - 1) / this.grain);
    let all = true;
    for (let g = g0; g <= g1; g++) if (this.map[g] !== 1 || this.#locks.has(g)) all = false;
    if (all) {
      await this.#data.write(offset, data);
      this.dirty.fill(1, g0, g1 + 1);
      return;
    }
    const parts: Promise<void>[] = [];
    for (let g = g0; g <= g1; g++) {
      const start = Math.max(offset, g * this.grain);
      const end = Math.min(offset + data.length, g * this.grain + this.grainLength(g));
      parts.push(this.#writeGrain(g, start, data.subarray(start - offset, end - offset), readParent));
    }
    const results = await Promise.allSettled(parts);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  async #writeGrain(
    g: number,
    offset: number,
    piece: Uint8Array,
    readParent: (offset: number, into: Uint8Array) => Promise<void>,
  ): Promise<void> {
    // Only the first write of a grain needs the lock: it decides what the whole grain holds.
    while (this.map[g] !== 1) {
      const held = this.#locks.get(g);
      if (held) {
        await held;
        continue;
      }
      let release!: () => void;
      this.#locks.set(
        g,
        new Promise<void>((r) => {
          release = r;
        }),
      );
      try {
        const gStart = g * this.grain;
        const gLength = this.grainLength(g);
        let whole = piece;
        if (piece.length !== gLength) {
          whole = new Uint8Array(gLength);
          await readParent(gStart, whole);
          whole.set(piece, offset - gStart);
        }
        await this.#data.write(gStart, whole);
        if (this.#syncData) await this.#dataSynced();
        this.#check();
        writeSync(this.#mapFd, this.#one, 0, 1, g);
        this.map[g] = 1;
        this.dirty[g] = 1;
        return;
      } finally {
        this.#locks.delete(g);
        release();
      }
    }
    await this.#data.write(offset, piece);
    this.dirty[g] = 1;
  }

  /**
   * Resolves once a data sync that started after the caller's write completed has finished. A
   * sync already running may have started before that write: the caller joins the one queued
   * behind it, which every grain arriving meanwhile shares.
   */
  #dataSynced(): Promise<void> {
    if (!this.#syncRunning) {
      const run = this.#data.flush().finally(() => {
        if (this.#syncRunning === run) this.#syncRunning = undefined;
      });
      this.#syncRunning = run;
      return run;
    }
    this.#syncQueued ??= this.#syncRunning
      .catch(() => {})
      .then(() => {
        this.#syncQueued = undefined;
        return this.#dataSynced();
      });
    return this.#syncQueued;
  }

  /** Makes `data` and the map durable (data first: a map byte must never point at unsynced data). */
  async flush(): Promise<void> {
    this.#check();
    await this.#data.flush();
    fdatasyncSync(this.#mapFd);
  }

  /** Bytes allocated in `data`. */
  allocatedGrains(): number {
    let n = 0;
    for (let g = 0; g < this.grains; g++) n += this.map[g]!;
    return n;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      closeSync(this.#mapFd);
    } finally {
      await this.#data.close();
    }
  }

  #check(): void {
    if (this.#closed) throw new VdError('ERR_VD_CLOSED', 'the snapshot redo log is closed');
  }
}

function checkGeometry(size: number, grain: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new VdError('ERR_VD_INVALID_ARGUMENT', `overlay size ${size} is not a byte count`);
  if (!Number.isSafeInteger(grain) || grain < 512 || (grain & (grain - 1)) !== 0) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `overlay grain ${grain} is not a power of two ≥ 512`);
  }
}
