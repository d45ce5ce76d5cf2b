import { createHash } from 'node:crypto';
import { Disk, VdError } from '@vd/core';
import type { ChangedArea } from './tracker.js';

/**
 * Trust checks. CBT has had data-corrupting bugs (vSphere: KB 2090639, KB 2136854), and vendors
 * defend by comparing data: blocks the tracker calls unchanged since a change ID must read the
 * same now as in the backup taken at that change ID. These functions do that comparison, for
 * every unchanged block or a random sample, against a readable copy of the earlier state (the
 * backup or a snapshot, as a Disk) or against digests recorded when it was taken.
 */

/** Per-block digests of a disk (16 bytes of SHA-256 per block), kept with a backup. */
export interface BlockDigests {
  granularity: number;
  size: number;
  /** `digests[i*16 .. i*16+16)` is block i's. */
  digests: Uint8Array;
}

export interface DigestOptions {
  /** Bytes per digest, a power of two ≥ 512 (default 1 MiB: 16 MiB of digests per TiB). */
  granularity?: number;
  signal?: AbortSignal;
}

export interface VerifyOptions {
  /** Check every unchanged block (`'all'`, the default) or this fraction of them, chosen at random. */
  sample?: number | 'all';
  /** Seed of the sample, to repeat a check exactly. */
  seed?: number;
  /** Block size compared against a Disk (default 1 MiB); digests bring their own. */
  granularity?: number;
  /** Reads in flight (default 8). */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface VerifyReport {
  /** Unchanged blocks read and compared. */
  checkedBlocks: number;
  checkedBytes: number;
  /** Blocks reported unchanged that differ: a tracker bug, or a change made behind its back. */
  mismatches: ChangedArea[];
  ok: boolean;
}

const DIGEST = 16;
const MiB = 1 << 20;

function checkGranularity(g: number): void {
  if (!Number.isSafeInteger(g) || g < 512 || (g & (g - 1)) !== 0) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `granularity ${g} is not a power of two ≥ 512`);
  }
}

function digest(data: Uint8Array): Uint8Array {
  return createHash('sha256').update(data).digest().subarray(0, DIGEST);
}

/** Digests every block of `disk`, to keep beside a backup for later `verifyUnchanged` calls. */
export async function digestBlocks(disk: Disk, opts: DigestOptions = {}): Promise<BlockDigests> {
  const granularity = opts.granularity ?? MiB;
  checkGranularity(granularity);
  const blocks = Math.ceil(disk.size / granularity);
  const digests = new Uint8Array(blocks * DIGEST);
  for (let b = 0; b < blocks; b++) {
    const at = b * granularity;
    const data = await disk.read(at, Math.min(granularity, disk.size - at), { signal: opts.signal });
    digests.set(digest(data), b * DIGEST);
  }
  return { granularity, size: disk.size, digests };
}

/**
 * Compares the blocks of `current` that lie wholly outside `changed` with `previous` (the state
 * at the change ID `changed` was asked against). `changed` is every area, sorted, as
 * `queryChangedAreas` pages return them. A mismatch means the changed areas cannot be trusted:
 * take a full backup (and reset tracking by removing the sidecar).
 */
export async function verifyUnchanged(
  current: Disk,
  previous: Disk | BlockDigests,
  changed: readonly ChangedArea[],
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  const granularity = previous instanceof Disk ? (opts.granularity ?? MiB) : previous.granularity;
  checkGranularity(granularity);
  const size = previous instanceof Disk ? previous.size : previous.size;
  if (size !== current.size) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `the earlier state is ${size} bytes and the disk ${current.size}: not comparable`);
  }
  if (!(previous instanceof Disk) && previous.digests.length !== Math.ceil(size / granularity) * DIGEST) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'digests do not match their size and granularity');
  }
  const sample = opts.sample ?? 'all';
  if (sample !== 'all' && !(typeof sample === 'number' && sample > 0 && sample <= 1)) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `sample ${String(sample)} is not 'all' or a fraction in (0, 1]`);
  }
  const random = mulberry32(opts.seed ?? Date.now());
  const blocks = Math.ceil(size / granularity);

  // Unchanged blocks: those no changed area touches.
  const selected: number[] = [];
  let k = 0;
  let last = -1;
  for (let b = 0; b < blocks; b++) {
    const start = b * granularity;
    const end = Math.min(start + granularity, size);
    while (k < changed.length && changed[k]!.start + changed[k]!.length <= start) {
      const a = changed[k]!;
      if (a.start < last) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'changed areas must be sorted');
      last = a.start;
      k++;
    }
    const touched = k < changed.length && changed[k]!.start < end;
    if (touched) continue;
    if (sample === 'all' || random() < sample) selected.push(b);
  }

  const mismatches: ChangedArea[] = [];
  let checkedBytes = 0;
  let next = 0;
  const worker = async () => {
    while (next < selected.length) {
      const b = selected[next++]!;
      const at = b * granularity;
      const length = Math.min(granularity, size - at);
      const now = await current.read(at, length, { signal: opts.signal });
      let same: boolean;
      if (previous instanceof Disk) {
        const then = await previous.read(at, length, { signal: opts.signal });
        same = Buffer.from(now.buffer, now.byteOffset, now.length).equals(then);
      } else {
        same = Buffer.from(digest(now)).equals(previous.digests.subarray(b * DIGEST, (b + 1) * DIGEST));
      }
      checkedBytes += length;
      if (!same) mismatches.push({ start: at, length });
    }
  };
  const concurrency = Math.max(1, Math.min(opts.concurrency ?? 8, 64));
  await Promise.all(Array.from({ length: concurrency }, worker));
  mismatches.sort((a, b) => a.start - b.start);
  return { checkedBlocks: selected.length, checkedBytes, mismatches, ok: mismatches.length === 0 };
}

/** A small seeded PRNG (mulberry32): a sample is reproducible from its seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
