import { BufferPool } from '../buffer-pool.js';
import { abortError } from '../errors.js';

/**
 * Buffers of finished runs, for the next run to take: a process that copies disk after disk does
 * not leave each copy's buffers (32 MiB by default) to the garbage collector. Bounded, and dropped
 * when no run has used one for a while.
 */
export const spareBuffers = new BufferPool(64 << 20, 30_000);

/**
 * Runs `work` over `items` with at most `workers` items in progress. Each worker owns one buffer
 * of `bufferSize` bytes (from a buffer of its size class, `BufferPool`), taken on first use and reused
 * for every item it takes, so nothing is allocated per request. A worker whose items all settled
 * hands its buffer on to later runs.
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
      own ??= spareBuffers.get(opts.bufferSize);
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
    if (own) spareBuffers.release(own);
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
