import { Buffer } from 'node:buffer';

/**
 * Reusable buffers in power-of-two size classes, so a hot path (an NBD server's replies and WRITE
 * payloads, the copy engine's chunks) does not allocate a new buffer per request or per copy.
 * Bounded: buffers beyond `maxPooledBytes` are left to the GC. With `idleMs`, the idle buffers are
 * dropped when nothing has been taken or given back for that long.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  #pooled = 0;
  #idle: NodeJS.Timeout | undefined;

  constructor(
    readonly maxPooledBytes = 32 << 20,
    readonly idleMs?: number,
  ) {}

  /** A buffer of exactly `n` bytes (a view of a pooled one); give it back with `release`. */
  get(n: number): Buffer {
    const size = n <= 4096 ? 4096 : 2 ** Math.ceil(Math.log2(n));
    const b = this.#free.get(size)?.pop();
    if (b) {
      this.#pooled -= size;
      return b.subarray(0, n);
    }
    return Buffer.from(new ArrayBuffer(size), 0, n);
  }

  release(view: Uint8Array): void {
    const size = view.buffer.byteLength;
    if (this.#pooled + size > this.maxPooledBytes || view.byteOffset !== 0 || size < 4096 || (size & (size - 1)) !== 0) return;
    let list = this.#free.get(size);
    if (!list) {
      list = [];
      this.#free.set(size, list);
    }
    list.push(Buffer.from(view.buffer as ArrayBuffer));
    this.#pooled += size;
    if (this.idleMs !== undefined) {
      clearTimeout(this.#idle);
      this.#idle = setTimeout(() => this.drop(), this.idleMs);
      this.#idle.unref();
    }
  }

  /** Lets the GC have the idle buffers. */
  drop(): void {
    clearTimeout(this.#idle);
    this.#free.clear();
    this.#pooled = 0;
  }
}
