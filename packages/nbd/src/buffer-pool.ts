/**
 * Reusable buffers in power-of-two size classes, so the server's read path does not allocate a
 * new buffer per request. Bounded: buffers beyond `maxPooledBytes` are left to the GC.
 */
export class BufferPool {
  readonly #free = new Map<number, Uint8Array[]>();
  #pooled = 0;

  constructor(readonly maxPooledBytes = 32 << 20) {}

  /** A buffer of exactly `n` bytes (a view of a pooled one); give it back with `release`. */
  get(n: number): Uint8Array {
    const size = n <= 4096 ? 4096 : 2 ** Math.ceil(Math.log2(n));
    const list = this.#free.get(size);
    const b = list?.pop();
    if (b) {
      this.#pooled -= size;
      return b.subarray(0, n);
    }
    return new Uint8Array(new ArrayBuffer(size), 0, n);
  }

  release(view: Uint8Array): void {
    const size = view.buffer.byteLength;
    if (this.#pooled + size > this.maxPooledBytes || view.byteOffset !== 0 || size < 4096 || (size & (size - 1)) !== 0) return;
    let list = this.#free.get(size);
    if (!list) {
      list = [];
      this.#free.set(size, list);
    }
    list.push(new Uint8Array(view.buffer));
    this.#pooled += size;
  }
}
