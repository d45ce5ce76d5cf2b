import { debug, loadSparseAddon } from '@vd/core';

/** The zero-copy calls of the optional native package `@vd/sparse`. */
export interface ZeroCopyOps {
  sendFiles(
    sockFd: number,
    pieces: readonly { header?: Uint8Array | null; fileFd: number; position: number; length: number }[],
    opts: { stallTimeout?: number; signal?: AbortSignal },
  ): Promise<number>;
  dup(fd: number): number;
  close(fd: number): void;
}

let loading: Promise<ZeroCopyOps | undefined> | undefined;

/**
 * The sendfile calls of `@vd/sparse` (loaded once, by `@vd/core`), for the server's READ replies
 * and the client's WRITE payloads. Absent, unbuilt, too old, or switched off with
 * `VD_NBD_ZEROCOPY=0`, it resolves undefined and both copy through buffers.
 */
export function loadZeroCopy(): Promise<ZeroCopyOps | undefined> {
  loading ??= (async () => {
    if (process.env.VD_NBD_ZEROCOPY === '0') {
      debug('nbd: zero-copy sends are off (VD_NBD_ZEROCOPY=0)');
      return undefined;
    }
    const mod = await loadSparseAddon();
    const { sendFiles, dup, close } = (mod ?? {}) as Partial<ZeroCopyOps>;
    if (typeof sendFiles === 'function' && typeof dup === 'function' && typeof close === 'function') return { sendFiles, dup, close };
    debug(mod ? 'nbd: @vd/sparse lacks sendFiles/dup/close (too old); sends are copied' : 'nbd: sends are copied (@vd/sparse not loaded)');
    return undefined;
  })();
  return loading;
}

/**
 * Half of libuv's pool (UV_THREADPOOL_SIZE, default 4), at most 4; none with a one-thread pool,
 * where a single stalled client would hold the only thread and stop every file read.
 */
export function defaultZeroCopySends(): number {
  const pool = Number(process.env.UV_THREADPOOL_SIZE);
  const size = Number.isSafeInteger(pool) && pool > 0 ? pool : 4;
  return Math.min(4, Math.floor(size / 2));
}

/**
 * Zero-copy sends running at once: a server's READ replies (one set per server), or the client's
 * WRITEs (one set per process). Each holds a libuv pool thread for as long as the peer takes to
 * read (up to the stall limit), so the cap stays below the pool size and stalled peers cannot
 * starve file I/O; what finds no slot is copied instead.
 */
export class SendSlots {
  #active = 0;
  constructor(readonly max: number) {}

  get available(): boolean {
    return this.#active < this.max;
  }

  tryAcquire(): boolean {
    if (this.#active >= this.max) return false;
    this.#active++;
    return true;
  }

  release(): void {
    this.#active--;
  }
}
