import { onAbort } from './abort-hub.js';
import { abortError } from './errors.js';

interface Waiter {
  resolve: () => void;
  reject: (e: unknown) => void;
  unsubscribe?: () => void;
}

/**
 * A FIFO counting semaphore. Requests wait their turn in order, so a flush queued after writes
 * is not overtaken by later requests; an aborted waiter leaves the queue without taking a slot.
 */
export class Limiter {
  #active = 0;
  readonly #waiters: Waiter[] = [];

  constructor(readonly limit: number) {}

  get active(): number {
    return this.#active;
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortError(signal, 'request'));
    if (this.#active < this.limit && this.#waiters.length === 0) {
      this.#active++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      if (signal) {
        waiter.unsubscribe = onAbort(signal, () => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(abortError(signal, 'request'));
        });
      }
      this.#waiters.push(waiter);
    });
  }

  release(): void {
    const next = this.#waiters.shift();
    if (next) {
      next.unsubscribe?.();
      next.resolve();
    } else {
      this.#active--;
    }
  }

  /** Fails every waiter (on destroy). */
  rejectAll(err: unknown): void {
    for (const w of this.#waiters.splice(0)) {
      w.unsubscribe?.();
      w.reject(err);
    }
  }
}
