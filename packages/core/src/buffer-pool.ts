import { Buffer } from 'node:buffer';

/**
 * A size class just above each power of two, for data behind a protocol header: a 1 MiB NBD READ
 * reply sent as one buffer with its 28-byte header (over TLS) takes a buffer of 1 MiB + 64, not
 * 2 MiB. With 2 MiB ones a pool of 32 MiB kept half the replies in flight, about one in twenty
 * was a fresh zero-filled allocation, and a TLS server read by nbdcopy peaked at 159-167 MiB of
 * RSS against 108-110 MiB with this class.
 */
const HEADROOM = 64;

/** The size of the buffers that serve requests of `n` bytes: 4 KiB at least, a power of two, or one plus HEADROOM. */
function sizeClass(n: number): number {
  if (n <= 4096) return 4096;
  const power = 2 ** Math.ceil(Math.log2(n));
  return n - power / 2 <= HEADROOM ? power / 2 + HEADROOM : power;
}

/**
 * Reusable buffers in size classes (powers of two, and each plus room for a header), so a hot
 * path (an NBD server's replies and WRITE payloads, the copy engine's chunks) does not allocate a
 * new buffer per request or per copy. Bounded: buffers beyond `maxPooledBytes` are left to the GC.
 * With `idleMs`, the idle buffers are dropped when nothing has been taken or given back for that
 * long.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  #pooled = 0;
  #idle: NodeJS.Timeout | undefined;

  constructor(
    readonly maxPooledBytes = 32 << 20,
    readonly idleMs?: number,
  ) {}

  /** Bytes held for reuse. */
  get pooledBytes(): number {
    return this.#pooled;
  }

  /** A buffer of exactly `n` bytes (a view of a pooled one); give it back with `release`. */
  get(n: number): Buffer {
    const size = sizeClass(n);
    const b = this.#free.get(size)?.pop();
    if (b) {
      this.#pooled -= size;
      return b.subarray(0, n);
    }
    return Buffer.from(new ArrayBuffer(size), 0, n);
  }

  /** Takes back a buffer `get` gave (any other is left to the GC). */
  release(view: Uint8Array): void {
    const size = view.buffer.byteLength;
    if (this.#pooled + size > this.maxPooledBytes || view.byteOffset !== 0 || size !== sizeClass(size)) return;
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
