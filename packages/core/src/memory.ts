import { defaultCapabilities } from './capabilities.js';
import { Disk } from './disk.js';
import { VdError } from './errors.js';
import type { BlockSource, Capabilities, Extent, IoOptions } from './spec.js';

export interface MemorySourceOptions {
  /** Block size for allocation tracking and the minimum request size (default 4096 for tracking, minimum 1). */
  granularity?: number;
  /** Override declared capabilities (to test the wrapper's emulation and the conformance skips). */
  capabilities?: Partial<Capabilities>;
  /** Initial contents, copied; the size is rounded up to nothing, taken as is. */
  data?: Uint8Array;
}

/**
 * A sparse in-memory disk: blocks are allocated on first write, trimmed blocks become holes and
 * read back as zeroes. For tests, examples and as the reference source of the conformance suite.
 */
export class MemorySource implements BlockSource {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly #grain: number;
  /** Block index → contents; a missing block is a hole, an entry of `null` is an allocated zero block. */
  readonly #blocks = new Map<number, Uint8Array | null>();
  #closed = false;

  constructor(size: number, opts: MemorySourceOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0)
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `memory disk size ${size} is not a safe non-negative integer`);
    this.size = size;
    this.#grain = opts.granularity ?? 4096;
    this.capabilities = {
      ...defaultCapabilities,
      fua: 'native',
      zero: 'native',
      fastZero: true,
      trim: 'native',
      trimReadsZero: true,
      extents: ['base:allocation'],
      ...opts.capabilities,
    };
    if (opts.data) this.#writeSync(0, opts.data.subarray(0, size));
  }

  /** Number of allocated bytes (blocks holding data or written zeroes). */
  get allocatedBytes(): number {
    return this.#blocks.size * this.#grain;
  }

  async _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    this.#check();
    const g = this.#grain;
    let done = 0;
    while (done < into.length) {
      const pos = offset + done;
      const index = Math.floor(pos / g);
      const within = pos - index * g;
      const n = Math.min(g - within, into.length - done);
      const block = this.#blocks.get(index);
      if (block) into.set(block.subarray(within, within + n), done);
      else into.fill(0, done, done + n);
      done += n;
    }
  }

  async _write(offset: number, data: Uint8Array): Promise<void> {
    this.#check();
    this.#writeSync(offset, data);
  }

  async _flush(): Promise<void> {
    this.#check();
  }

  async _zero(offset: number, length: number, opts: { noHole?: boolean | undefined }): Promise<void> {
    this.#check();
    this.#clear(offset, length, opts.noHole ? null : undefined);
  }

  async _trim(offset: number, length: number): Promise<void> {
    this.#check();
    this.#clear(offset, length, undefined);
  }

  async _extents(offset: number, length: number): Promise<Extent[]> {
    this.#check();
    const g = this.#grain;
    const end = offset + length;
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / g);
      const blockEnd = Math.min((index + 1) * g, end, this.size);
      const block = this.#blocks.get(index);
      const type = block === undefined ? 'hole' : block === null ? 'zero' : 'data';
      const last = out[out.length - 1];
      if (last && last.type === type) last.length += blockEnd - pos;
      else out.push({ offset: pos, length: blockEnd - pos, type });
      pos = blockEnd;
    }
    return out;
  }

  _info() {
    return { format: 'memory', allocatedBytes: this.allocatedBytes };
  }

  async _close(): Promise<void> {
    this.#closed = true;
  }

  #check(): void {
    if (this.#closed) throw new VdError('ERR_VD_CLOSED', 'memory disk is closed');
  }

  #writeSync(offset: number, data: Uint8Array): void {
    const g = this.#grain;
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const index = Math.floor(pos / g);
      const within = pos - index * g;
      const n = Math.min(g - within, data.length - done);
      let block = this.#blocks.get(index);
      if (!block) {
        block = new Uint8Array(Math.min(g, this.size - index * g));
        this.#blocks.set(index, block);
      }
      block.set(data.subarray(done, done + n), within);
      done += n;
    }
  }

  /** Whole blocks in the range become `state` (hole or allocated zero); partial ones are zero-filled. */
  #clear(offset: number, length: number, state: null | undefined): void {
    const g = this.#grain;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / g);
      const start = index * g;
      const blockEnd = Math.min(start + g, this.size);
      const stop = Math.min(blockEnd, end);
      if (pos === start && stop === blockEnd) {
        if (state === undefined) this.#blocks.delete(index);
        else this.#blocks.set(index, null);
      } else {
        const block = this.#blocks.get(index);
        if (block) block.fill(0, pos - start, stop - start);
        else if (state === null) this.#blocks.set(index, new Uint8Array(blockEnd - start));
      }
      pos = stop;
    }
  }
}

/** A new in-memory disk wrapped in a `Disk`. */
export function memoryDisk(size: number, opts: MemorySourceOptions & { readOnly?: boolean } = {}): Disk {
  return new Disk(new MemorySource(size, opts), { transport: 'memory', readOnly: opts.readOnly });
}
