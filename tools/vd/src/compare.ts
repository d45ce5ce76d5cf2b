import { BASE_ALLOCATION, type Disk, type Extent, throwIfAborted } from '@vd/core';

export interface CompareResult {
  identical: boolean;
  /** Set when the sizes differ; the contents are not compared then. */
  sizes?: { a: number; b: number };
  /** The lowest offset where the disks differ. */
  firstDifference?: number;
  /** Bytes read and compared (from one disk where the other is a hole, from both elsewhere). */
  bytesCompared: number;
  /** Bytes skipped because both disks report a hole or zero extent there. */
  bytesSkipped: number;
  seconds: number;
}

export interface CompareOptions {
  chunkSize?: number;
  inFlight?: number;
  signal?: AbortSignal;
}

/** A stretch where neither disk changes extent type; `zero` means the disk reads zero there. */
interface Segment {
  offset: number;
  length: number;
  aZero: boolean;
  bZero: boolean;
}

const readsZero = (e: Extent) => e.type === 'hole' || e.type === 'zero';

/** Walks both allocation maps together and yields stretches of constant type on both sides. */
async function* segments(a: Disk, b: Disk, signal: AbortSignal | undefined): AsyncGenerator<Segment> {
  const ia = a.extents({ context: BASE_ALLOCATION, signal });
  const ib = b.extents({ context: BASE_ALLOCATION, signal });
  let ea = (await ia.next()).value as Extent | undefined;
  let eb = (await ib.next()).value as Extent | undefined;
  let at = 0;
  while (ea && eb) {
    const end = Math.min(ea.offset + ea.length, eb.offset + eb.length);
    yield { offset: at, length: end - at, aZero: readsZero(ea), bZero: readsZero(eb) };
    at = end;
    if (ea.offset + ea.length === end) ea = (await ia.next()).value as Extent | undefined;
    if (eb.offset + eb.length === end) eb = (await ib.next()).value as Extent | undefined;
  }
}

/** Index of the first byte where `x` and `y` (same length) differ, or -1. */
function firstMismatch(x: Uint8Array, y: Uint8Array): number {
  const bx = Buffer.from(x.buffer, x.byteOffset, x.length);
  const by = Buffer.from(y.buffer, y.byteOffset, y.length);
  if (bx.equals(by)) return -1;
  // Narrow down with block compares before the byte loop.
  let lo = 0;
  for (let step = 65536; step >= 1; step = step >> 4) {
    while (lo + step <= x.length && bx.compare(by, lo, lo + step, lo, lo + step) === 0) lo += step;
  }
  return lo;
}

let zeroes: Uint8Array | undefined;

function firstNonZero(x: Uint8Array): number {
  zeroes ??= new Uint8Array(1 << 20);
  const ZEROES = zeroes;
  for (let at = 0; at < x.length; at += ZEROES.length) {
    const part = x.subarray(at, Math.min(at + ZEROES.length, x.length));
    const i = firstMismatch(part, ZEROES.subarray(0, part.length));
    if (i >= 0) return at + i;
  }
  return -1;
}

/**
 * Compares two disks byte for byte. Sizes first; then both allocation maps are walked together:
 * where both read zero nothing is read, where one does only the other is read and checked for
 * zeroes, elsewhere both are read, in large chunks (4 MiB, 4 in flight, buffers reused). Stops at the
 * first difference.
 */
export async function compareDisks(a: Disk, b: Disk, opts: CompareOptions = {}): Promise<CompareResult> {
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  if (a.size !== b.size)
    return { identical: false, sizes: { a: a.size, b: b.size }, bytesCompared: 0, bytesSkipped: 0, seconds: seconds() };
  const chunk = opts.chunkSize ?? 4 << 20;
  const inFlight = opts.inFlight ?? 4;
  let bytesCompared = 0;
  let bytesSkipped = 0;

  // One pair of buffers per slot, reused: chunk n uses slot n % inFlight, which is free again
  // because chunk n - inFlight was judged before chunk n was issued.
  const slots = Array.from({ length: inFlight }, () => ({ a: new Uint8Array(0), b: new Uint8Array(0) }));
  const buffer = (slot: { a: Uint8Array; b: Uint8Array }, side: 'a' | 'b', length: number) => {
    if (slot[side].length < length) slot[side] = new Uint8Array(chunk);
    return slot[side].subarray(0, length);
  };
  let issued = 0;

  /** One chunk's check, resolving to the absolute offset of its first difference or -1. */
  const check = async (s: Segment): Promise<number> => {
    const slot = slots[issued++ % inFlight]!;
    const ra = s.aZero ? undefined : a.readInto(s.offset, buffer(slot, 'a', s.length), { signal: opts.signal });
    const rb = s.bZero ? undefined : b.readInto(s.offset, buffer(slot, 'b', s.length), { signal: opts.signal });
    const [da, db] = await Promise.all([ra, rb]);
    const i = da && db ? firstMismatch(da, db) : firstNonZero((da ?? db)!);
    return i < 0 ? -1 : s.offset + i;
  };

  // Chunks run `inFlight` at a time and are judged in offset order, so the first difference
  // reported is the lowest one even though later chunks may finish first.
  const window: Promise<number>[] = [];
  const settle = async (): Promise<number> => {
    const found = await window.shift()!;
    return found;
  };
  try {
    for await (const seg of segments(a, b, opts.signal)) {
      if (seg.aZero && seg.bZero) {
        bytesSkipped += seg.length;
        continue;
      }
      for (let at = seg.offset; at < seg.offset + seg.length; at += chunk) {
        throwIfAborted(opts.signal, 'compare');
        const n = Math.min(chunk, seg.offset + seg.length - at);
        const p = check({ ...seg, offset: at, length: n });
        p.catch(() => {}); // judged in order below; keeps an early failure from going unhandled
        window.push(p);
        bytesCompared += n;
        if (window.length >= inFlight) {
          const found = await settle();
          if (found >= 0) return { identical: false, firstDifference: found, bytesCompared, bytesSkipped, seconds: seconds() };
        }
      }
    }
    while (window.length > 0) {
      const found = await settle();
      if (found >= 0) return { identical: false, firstDifference: found, bytesCompared, bytesSkipped, seconds: seconds() };
    }
    return { identical: true, bytesCompared, bytesSkipped, seconds: seconds() };
  } finally {
    // On an early return the rest are still in flight: let them finish before the disks close.
    await Promise.allSettled(window);
  }
}
