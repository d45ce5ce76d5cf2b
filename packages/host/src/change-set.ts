import { open, readFile, rename } from 'node:fs/promises';
import type { ChangedArea, ChangedAreas } from '@vd/cbt';
import { VdError } from '@vd/core';

/**
 * The blocks changed between the snapshot before a snapshot and the snapshot itself, captured at
 * the moment it is taken (when "since the previous change ID" and "up to this one" are the same
 * thing). The tracker keeps one counter per block, so a block written again after the snapshot
 * would drop out of a later "up to" query; this set keeps the answer exact for the snapshot's
 * lifetime. One bit per block, kept beside the redo log.
 */
export class ChangeSet {
  private constructor(
    readonly granularity: number,
    readonly size: number,
    readonly bits: Uint8Array,
  ) {}

  static fromAreas(areas: readonly ChangedArea[], granularity: number, size: number): ChangeSet {
    const set = new ChangeSet(granularity, size, new Uint8Array(Math.ceil(Math.ceil(size / granularity) / 8)));
    set.add(areas);
    return set;
  }

  /** Adds the blocks of `areas` (a page of a query, say: the set is built without holding every page). */
  add(areas: readonly ChangedArea[]): void {
    const g = this.granularity;
    for (const a of areas) {
      const last = Math.floor((a.start + a.length - 1) / g);
      for (let b = Math.floor(a.start / g); b <= last; b++) this.bits[b >> 3]! |= 1 << (b & 7);
    }
  }

  /** The blocks in any of `sets` (all of one disk and granularity): changes across consecutive snapshots. */
  static union(sets: readonly ChangeSet[]): ChangeSet {
    const first = sets[0];
    if (!first) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'a union of no change sets');
    const bits = new Uint8Array(first.bits.length);
    for (const s of sets) {
      if (s.granularity !== first.granularity || s.size !== first.size) {
        throw new VdError('ERR_VD_INVALID_ARGUMENT', 'change sets of different disks or granularities');
      }
      for (let i = 0; i < bits.length; i++) bits[i]! |= s.bits[i]!;
    }
    return new ChangeSet(first.granularity, first.size, bits);
  }

  has(block: number): boolean {
    return (this.bits[block >> 3]! & (1 << (block & 7))) !== 0;
  }

  /** Changed areas in `[offset, offset + length)`, paged like `queryChangedAreas`. */
  areas(offset: number, length: number, maxAreas: number): ChangedAreas {
    const g = this.granularity;
    const end = offset + length;
    const out: ChangedArea[] = [];
    if (length === 0) return { startOffset: offset, length: 0, areas: out };
    const lastBlock = Math.ceil(end / g);
    for (let b = Math.floor(offset / g); b < lastBlock; b++) {
      if (!this.has(b)) continue;
      const start = Math.max(b * g, offset);
      const stop = Math.min((b + 1) * g, end);
      const last = out[out.length - 1];
      if (last && last.start + last.length === start) {
        last.length = stop - last.start;
        continue;
      }
      if (out.length >= maxAreas) return { startOffset: offset, length: start - offset, areas: out };
      out.push({ start, length: stop - start });
    }
    return { startOffset: offset, length, areas: out };
  }

  /** Writes the set to `path` atomically (temporary file, fsync, rename). */
  async save(path: string): Promise<void> {
    const head = Buffer.alloc(16);
    head.write('VDCS', 0, 'latin1');
    head.writeUInt32LE(this.granularity, 4);
    head.writeBigUInt64LE(BigInt(this.size), 8);
    const tmp = `${path}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(Buffer.concat([head, this.bits]));
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  }

  /** Reads a set `save` wrote for a disk of `size` bytes; anything else is ERR_VD_CORRUPT. */
  static async load(path: string, size: number): Promise<ChangeSet> {
    const data = await readFile(path);
    const bad = (why: string) => new VdError('ERR_VD_CORRUPT', `change set ${path} is damaged (${why})`, { details: { path } });
    if (data.length < 16 || data.toString('latin1', 0, 4) !== 'VDCS') throw bad('no header');
    const granularity = data.readUInt32LE(4);
    if (granularity < 512 || (granularity & (granularity - 1)) !== 0) throw bad(`granularity ${granularity}`);
    if (data.readBigUInt64LE(8) !== BigInt(size)) throw bad('made for a disk of another size');
    const want = Math.ceil(Math.ceil(size / granularity) / 8);
    if (data.length - 16 !== want) throw bad(`${data.length - 16} bytes of bits, expected ${want}`);
    return new ChangeSet(granularity, size, new Uint8Array(data.subarray(16)));
  }
}
