import type { Disk } from '../disk.js';
import { VdError } from '../errors.js';
import type { CopyRange } from './options.js';

/**
 * One step of a copy. `data`: read the chunk and write it (or zero it when it is all zero).
 * `zero`: make the range zero on the target. `skip`: the target already reads zero there.
 */
export interface WorkItem {
  kind: 'data' | 'zero' | 'skip';
  offset: number;
  length: number;
}

/** Checks ranges one by one: whole numbers, aligned, inside the disk, sorted and not overlapping. */
class RangeChecker {
  #end = 0;
  #index = 0;

  constructor(
    readonly size: number,
    readonly align: number,
  ) {}

  check(r: CopyRange): void {
    const index = this.#index++;
    const offset = r?.offset;
    const length = r?.length;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new VdError(
        'ERR_VD_INVALID_ARGUMENT',
        `copy: extents[${index}] ${JSON.stringify(r)} needs non-negative safe integers offset and length`,
        {
          details: { index, offset, length },
        },
      );
    }
    if (offset < this.#end) {
      throw new VdError(
        'ERR_VD_INVALID_ARGUMENT',
        `copy: extents[${index}] at ${offset} starts before the previous range ends (${this.#end}); pass ranges sorted and not overlapping`,
        {
          details: { index, offset, length, previousEnd: this.#end },
        },
      );
    }
    if (offset + length > this.size) {
      throw new VdError(
        'ERR_VD_OUT_OF_RANGE',
        `copy: extents[${index}] ${offset}+${length} reaches past the end of the source (${this.size} bytes)`,
        {
          details: { index, offset, length, size: this.size },
        },
      );
    }
    if (offset % this.align !== 0 || length % this.align !== 0) {
      throw new VdError(
        'ERR_VD_ALIGNMENT',
        `copy: extents[${index}] ${offset}+${length} is not aligned to ${this.align} bytes, the block size both disks accept`,
        {
          details: { index, offset, length, minimum: this.align },
        },
      );
    }
    this.#end = offset + length;
  }
}

/**
 * The ranges to copy, checked, with empty ones dropped and touching ones merged. An array is
 * checked whole before the copy starts (and its total is known); other iterables as they are read.
 */
export function requestedRanges(
  extents: Iterable<CopyRange> | AsyncIterable<CopyRange> | undefined,
  size: number,
  align: number,
): { total: number | undefined; ranges: AsyncIterable<CopyRange> } {
  if (extents === undefined || extents === null) {
    return { total: size, ranges: merged([{ offset: 0, length: size }], undefined) };
  }
  const isIterable = typeof (extents as Iterable<CopyRange>)[Symbol.iterator] === 'function';
  const isAsync = typeof (extents as AsyncIterable<CopyRange>)[Symbol.asyncIterator] === 'function';
  if (!isIterable && !isAsync) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', 'copy: extents must be an array, an iterable or an async iterable of { offset, length }');
  }
  if (Array.isArray(extents)) {
    const checker = new RangeChecker(size, align);
    let total = 0;
    for (const r of extents as CopyRange[]) {
      checker.check(r);
      total += r.length;
    }
    return { total, ranges: merged(extents as CopyRange[], undefined) };
  }
  return { total: undefined, ranges: merged(extents, new RangeChecker(size, align)) };
}

async function* merged(
  input: Iterable<CopyRange> | AsyncIterable<CopyRange>,
  checker: RangeChecker | undefined,
): AsyncGenerator<CopyRange> {
  let held: CopyRange | undefined;
  for await (const r of input) {
    checker?.check(r);
    if (r.length === 0) continue;
    if (held && held.offset + held.length === r.offset) {
      held.length += r.length;
      continue;
    }
    if (held) yield held;
    held = { offset: r.offset, length: r.length };
  }
  if (held) yield held;
}

export interface PlanOptions {
  chunkSize: number;
  /** Offsets and lengths both disks accept; range ends are multiples of it. */
  align: number;
  /** Largest single zero request. */
  zeroStep: number;
  targetIsZero: boolean;
  /**
   * Holes of at most this many bytes between two data extents in one chunk are read through, so a
   * fragmented source costs one request per chunk, not one per extent. 0: never. Only sensible
   * when zero runs are kept out of the target anyway (a zero target with `sparseBlock`).
   */
  mergeGap: number;
  /** Called with each range's length as it is taken from `ranges`, for `bytesTotal`. */
  onRange?: ((length: number) => void) | undefined;
  /** Goes with every extents query, and is checked between them, so a planner that has work left stops at once. */
  signal?: AbortSignal | undefined;
  onAbort: () => never;
}

/**
 * The copy as a lazy sequence of work items: each requested range intersected with the source's
 * allocation (queried piece by piece, never all at once), data split on a grid of `chunkSize` so
 * chunk boundaries (and their checksums) stay put from one copy to the next.
 *
 * Data extents are widened to `align` (reading a few zero bytes more is always correct), holes and
 * zero extents fill what is left, so every request is legal on both disks. Data pieces of one
 * chunk are gathered into one item (across small holes, see `mergeGap`) before it is yielded.
 */
export async function* planCopy(
  source: Disk,
  ranges: AsyncIterable<CopyRange>,
  opts: PlanOptions,
): AsyncGenerator<WorkItem, void, undefined> {
  const { chunkSize, align, zeroStep, targetIsZero, mergeGap } = opts;
  const cell = (offset: number) => Math.floor(offset / chunkSize);
  function* zeroes(from: number, to: number): Generator<WorkItem> {
    if (targetIsZero) {
      yield { kind: 'skip', offset: from, length: to - from };
      return;
    }
    for (let at = from; at < to; at += zeroStep) yield { kind: 'zero', offset: at, length: Math.min(zeroStep, to - at) };
  }
  for await (const range of ranges) {
    opts.onRange?.(range.length);
    const rangeEnd = range.offset + range.length;
    let cursor = range.offset;
    /** The data item being gathered; it always ends at `cursor`. */
    let held: WorkItem | undefined;
    if (opts.signal?.aborted) opts.onAbort();
    for await (const e of source.extents({ offset: range.offset, length: range.length, signal: opts.signal })) {
      if (e.type === 'hole' || e.type === 'zero') continue;
      const start = Math.max(cursor, Math.floor(e.offset / align) * align);
      const end = Math.min(rangeEnd, Math.ceil((e.offset + e.length) / align) * align);
      if (end <= start) continue;
      if (start > cursor) {
        if (held && start - cursor <= mergeGap && cell(start) === cell(held.offset)) {
          held.length += start - cursor;
        } else {
          if (held) yield held;
          held = undefined;
          yield* zeroes(cursor, start);
        }
      }
      let at = start;
      while (at < end) {
        const next = Math.min((cell(at) + 1) * chunkSize, end);
        if (held && cell(at) === cell(held.offset)) {
          held.length += next - at;
        } else {
          if (held) yield held;
          held = { kind: 'data', offset: at, length: next - at };
        }
        at = next;
        if (at % chunkSize === 0) {
          yield held;
          held = undefined;
        }
      }
      cursor = end;
      if (opts.signal?.aborted) opts.onAbort();
    }
    if (held) yield held;
    if (cursor < rangeEnd) yield* zeroes(cursor, rangeEnd);
  }
}
