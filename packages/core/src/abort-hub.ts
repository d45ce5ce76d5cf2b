/**
 * One 'abort' listener per signal, fanned out to every request that waits on it. A copy passes the
 * same signal to thousands of requests; a listener each would pile up on the signal (and trip
 * Node's MaxListeners warning) while this keeps exactly one.
 */
const hubs = new WeakMap<AbortSignal, Set<() => void>>();

/** Calls `fn` once when `signal` aborts; returns the function that unsubscribes it. */
export function onAbort(signal: AbortSignal, fn: () => void): () => void {
  let subscribers = hubs.get(signal);
  if (!subscribers) {
    const set = new Set<() => void>();
    subscribers = set;
    hubs.set(signal, set);
    signal.addEventListener(
      'abort',
      () => {
        for (const f of [...set]) f();
        set.clear();
      },
      { once: true },
    );
  }
  const set = subscribers;
  set.add(fn);
  return () => {
    set.delete(fn);
  };
}
