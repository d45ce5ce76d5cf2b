import { Buffer } from 'node:buffer';
import { abortError } from '../errors.js';

/**
 * Buffers of finished runs, by size, for the next run to take: a process that copies disk after
 * disk does not leave each copy's buffers (32 MiB by default) to the garbage collector. Bounded,
 * and dropped when no run has taken one for a while.
 */
const spare = new Map<number, Uint8Array[]>();
let spareBytes = 0;
const SPARE_LIMIT = 64 << 20;
const SPARE_IDLE_MS = 30_000;
let idle: NodeJS.Timeout | undefined;

function takeSpare(size: number): Uint8Array {
  const b = spare.get(size)?.pop();
  if (!b) return Buffer.allocUnsafeSlow(size);
  spareBytes -= size;
  return b;
}

function giveSpare(b: Uint8Array): void {
  if (spareBytes + b.length > SPARE_LIMIT) return;
  const list = spare.get(b.length);
  if (list) list.push(b);
  else spare.set(b.length, [b]);
  spareBytes += b.length;
  clearTimeout(idle);
  idle = setTimeout(dropSpare, SPARE_IDLE_MS);
  idle.unref();
}

/** Lets the GC have the spare buffers (also what tests call to start clean). */
export function dropSpare(): void {
  clearTimeout(idle);
  spare.clear();
  spareBytes = 0;
}

/**
 * Runs `work` over `items` with at most `workers` items in progress. Each worker owns one buffer
 * of `bufferSize` bytes, taken on first use and reused for every item it takes, so memory
 * stays below `workers × bufferSize` and nothing is allocated per request. A worker whose items
 * all settled hands its buffer on to later runs.
 *
 * Fails fast: after the first error (or an abort) no new item is taken, the items in progress are
 * waited for, and then the first error (or ERR_VD_ABORTED) is thrown. `work` that passes the
 * signal on to its requests ends as soon as it is aborted: a request still running then keeps only
 * its worker's buffer, which no item is given again (a worker that failed takes no more), and
 * which is garbage once that request settles.
 */
export async function runPool<T>(
  items: AsyncGenerator<T, void, undefined>,
  opts: { workers: number; bufferSize: number; signal?: AbortSignal | undefined; what: string },
  work: (item: T, buffer: () => Uint8Array) => Promise<void>,
): Promise<void> {
  let failure: { error: unknown } | undefined;
  const { signal } = opts;
  const stopped = () => failure !== undefined || signal?.aborted === true;

  const worker = async (): Promise<void> => {
    let own: Uint8Array | undefined;
    const buffer = () => {
      own ??= takeSpare(opts.bufferSize);
      return own;
    };
    while (!stopped()) {
      let next: IteratorResult<T, void>;
      try {
        next = await items.next();
      } catch (error) {
        failure ??= { error };
        break;
      }
      if (next.done || stopped()) break;
      try {
        await work(next.value, buffer);
      } catch (error) {
        // An aborted request may still write into the buffer: it is left to the GC.
        failure ??= { error };
        return;
      }
    }
    if (own) giveSpare(own);
  };

  await Promise.all(Array.from({ length: opts.workers }, worker));
  try {
    await items.return(undefined);
  } catch (error) {
    failure ??= { error };
  }
  if (failure) throw failure.error;
  if (signal?.aborted) throw abortError(signal, opts.what);
}
