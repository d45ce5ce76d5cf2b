import { Buffer } from 'node:buffer';
import { abortError } from '../errors.js';

/**
 * Runs `work` over `items` with at most `workers` items in progress. Each worker owns one buffer
 * of `bufferSize` bytes, allocated on first use and reused for every item it takes, so memory
 * stays below `workers × bufferSize` and nothing is allocated per request.
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
      own ??= Buffer.allocUnsafeSlow(opts.bufferSize);
      return own;
    };
    while (!stopped()) {
      let next: IteratorResult<T, void>;
      try {
        next = await items.next();
      } catch (error) {
        failure ??= { error };
        return;
      }
      if (next.done || stopped()) return;
      try {
        await work(next.value, buffer);
      } catch (error) {
        failure ??= { error };
        return;
      }
    }
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
